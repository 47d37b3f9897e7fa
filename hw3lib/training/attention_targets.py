"""Where each caption token should look: the encoder tokens under the box of the object its phrase names.

Attention supervision (Liu et al. 2017, "Attention Correctness in Neural Image Captioning") and the
pointing curve of training both need, for a caption and its image's objects:
  - the phrases that name an object ("a small red circle", "a circle coloured red"), as token positions;
  - which object each phrase names (colour and shape, then size where the phrase says it);
  - the encoder tokens (patches) each object covers.

Token positions follow the teacher-forcing layout (`tokenizer.teacher_forcing_batch`): the output at
position j predicts caption token j, so the positions of a phrase's tokens are where the decoder decides
to name that object; its first position is where it decides *which* object comes next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.patches import PatchGrid
from ..demo.phrasing import Phrase, phrases
from ..demo.world import Obj


@dataclass(frozen=True)
class PhraseTarget:
    """Where a phrase sits in the caption's tokens, and the object it names."""
    tokens: tuple[int, int]  # [start, end) token positions
    obj: int  # index into the image's objects


def assign(found: list[Phrase], objects: Sequence[Obj]) -> list[int | None]:
    """The object each phrase names, each object named at most once: same shape, same colour where the
    phrase gives one, same size where it gives one; among equals the first not yet taken. None when
    no object is left that fits."""
    taken: set[int] = set()
    out: list[int | None] = []
    for p in found:
        fits = [k for k, o in enumerate(objects) if k not in taken and p.fits(o)]
        k = fits[0] if fits else None
        if k is not None:
            taken.add(k)
        out.append(k)
    return out


def caption_targets(caption: str, offsets: Sequence[tuple[int, int]], objects: Sequence[Obj],
                    shapes: Sequence[str], colors: Sequence[str], max_tokens: int | None = None) -> list[PhraseTarget]:
    """Token positions of each phrase of `caption` (tokens given by their character `offsets`) and the
    object it names; phrases cut off by `max_tokens` or naming no object are left out."""
    found = phrases(caption, shapes, colors)
    out = []
    for p, k in zip(found, assign(found, objects), strict=True):
        inside = [j for j, (s, e) in enumerate(offsets) if s < p.chars[1] and e > p.chars[0]
                  and caption[s:e].strip()]
        if k is None or not inside or (max_tokens is not None and inside[-1] >= max_tokens):
            continue
        out.append(PhraseTarget((inside[0], inside[-1] + 1), k))
    return out


def batch_targets(targets: Sequence[Sequence[PhraseTarget]], masks: Sequence[torch.Tensor], T: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch of captions (their phrase targets and their images' object masks (`PatchGrid.token_masks`)), padded to T
    positions: where each position should look (B, T, S) bool, the positions inside a phrase (B, T)
    and the first position of each phrase (B, T) - where the next object is chosen."""
    S = masks[0].shape[1]
    where = torch.zeros(len(targets), T, S, dtype=torch.bool)
    inside = torch.zeros(len(targets), T, dtype=torch.bool)
    first = torch.zeros(len(targets), T, dtype=torch.bool)
    for b, (tg, m) in enumerate(zip(targets, masks, strict=True)):
        for t in tg:
            s, e = t.tokens[0], min(t.tokens[1], T)
            if s >= T:
                continue
            where[b, s:e] = m[t.obj]
            inside[b, s:e] = True
            first[b, s] = True
    return where, inside, first


@dataclass
class CaptionGrounding:
    """The objects behind a set of captions: per image its objects and side, per caption its phrase
    targets; object masks are made once per (image, encoder length)."""
    objects: list[tuple[Obj, ...]]  # per image
    sides: list[int]  # per image: its side in pixels (boxes are in pixels)
    targets: list[list[PhraseTarget]]  # per caption, in the order of the captions
    _masks: dict = field(default_factory=dict)  # (image, S) -> (n_objects, S) bool

    def masks(self, image: int, n_tokens: int) -> torch.Tensor:
        key = (image, n_tokens)
        if key not in self._masks:
            side = self.sides[image]
            self._masks[key] = PatchGrid.of_tokens(n_tokens).token_masks([o.box for o in self.objects[image]],
                                                                         (side, side))
        return self._masks[key]

    def batch(self, captions: Sequence[int], images: Sequence[int], T: int, n_tokens: int):
        """`batch_targets` for captions (their indices) of images (their indices)."""
        return batch_targets([self.targets[c] for c in captions], [self.masks(i, n_tokens) for i in images], T)

    def phrases(self) -> int:
        return sum(len(t) for t in self.targets)
