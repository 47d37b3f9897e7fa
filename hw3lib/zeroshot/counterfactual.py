"""Negation learned from counterfactual images (CoN-CLIP, Singh et al. 2025; NegBench, Alhamoud et al. 2025).

A negation is only learnable where the same words meet an image with and without the negated object.
The demo world draws such pairs from its boxes: P is a scene, and Q is the same scene with one object
of shape x (P holds one x) redrawn as a shape y that P lacks: the x is removed and a y added in its place,
in the same colour, size and square, on the same background. So P holds x and not y, Q holds y and not
x, and nothing else differs - not even the number of objects, which an added object would change and a
model could read instead of the negated word (measured: with added objects, "no y" learned to pick the
scene with fewer objects, and negated prompts stayed unread).

The objective, on normalised embeddings (`counterfactual_losses`):
  anchor        in-batch InfoNCE, images of P and Q against their descriptions (keeps retrieval);
  choose_text   P against {a true negation "<P's description>, but no y", the same words negating the x
                it holds, Q's description}: the true negation wins;
  choose_image  "no y here" against {P, Q}: P wins; "no x here": Q wins;
  distractor    P against {"no y here", "no x here"}: the first wins; Q: the second;
  loss = anchor + mean(choose_text, choose_image, distractor)   (CoN-CLIP's mean of three terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..demo.world import Obj, make_captions, render_objects, with_shape


@dataclass(frozen=True)
class CounterfactualPair:
    """One scene as a pair that differs in one object's shape: P holds `x` and not `y`, Q the reverse."""
    p_objects: tuple[Obj, ...]  # P: the scene
    q_objects: tuple[Obj, ...]  # Q: the scene with P's x redrawn as a y
    x: str  # the shape P holds (once) and Q lacks
    y: str  # the shape Q holds and P lacks
    p_captions: tuple[str, ...]  # descriptions of P (demo.make_captions)
    q_captions: tuple[str, ...]  # descriptions of Q


def counterfactual_pair(objs, shapes: list[str], side: int, rng: np.random.Generator,
                        captions: int = 3) -> CounterfactualPair | None:
    """The pair of one scene: an object whose shape the scene holds once, redrawn as a shape the scene
    lacks. None when every shape of the scene occurs more than once."""
    objs = tuple(objs)
    once = [k for k, o in enumerate(objs) if sum(x.shape == o.shape for x in objs) == 1]
    if not once:
        return None
    k = once[int(rng.integers(len(once)))]
    absent = [s for s in shapes if s not in {o.shape for o in objs}]
    y = absent[int(rng.integers(len(absent)))]
    q = tuple(with_shape(side, objs, k, y))
    return CounterfactualPair(objs, q, objs[k].shape, y, tuple(make_captions(rng, list(objs), side, captions)),
                              tuple(make_captions(rng, list(q), side, captions)))


def render_pair(pair: CounterfactualPair, side: int, seed) -> tuple:
    """P and Q drawn from the same generator state: the same background and the same colour jitter for
    every object, so the two images differ only where the redrawn object is."""
    return (render_objects(np.random.default_rng(seed), side, pair.p_objects),
            render_objects(np.random.default_rng(seed), side, pair.q_objects))


@dataclass
class CounterfactualLosses:
    anchor: torch.Tensor  # in-batch contrastive
    choose_text: torch.Tensor  # image P picks its true negation
    choose_image: torch.Tensor  # "no y" picks P over Q, "no x" picks Q over P
    distractor: torch.Tensor  # P picks "no y" over "no x", Q the reverse

    @property
    def total(self) -> torch.Tensor:
        return self.anchor + (self.choose_text + self.choose_image + self.distractor) / 3


def choose_first(anchor: torch.Tensor, candidates: list[torch.Tensor], scale) -> torch.Tensor:
    """Cross-entropy of each row of `anchor` (B, E) choosing candidates[0] among the candidates (each (B, E)),
    all normalised: the hard-negative term of CoN-CLIP and of Paiss et al.'s counting loss. Mean over rows."""
    logits = scale * torch.einsum("be,kbe->bk", anchor, torch.stack(list(candidates)))  # (B, K)
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


def in_batch_contrastive(images: torch.Tensor, texts: torch.Tensor, scale) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: images (N, E) and their texts (N, E), normalised; each image picks its text
    among the batch's and each text its image."""
    logits = scale * images @ texts.T  # (N, N)
    target = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class PairTexts(NamedTuple):
    """The texts of a batch of counterfactual pairs, encoded: each (B, E), normalised."""
    p_caption: torch.Tensor  # P's description
    q_caption: torch.Tensor  # Q's
    negated: torch.Tensor  # a true negation for P (of the y it lacks)
    false_negated: torch.Tensor  # the same words negating the x it holds
    no_y: torch.Tensor  # the standalone "no y here"
    no_x: torch.Tensor  # and "no x here"


def counterfactual_losses(p_image, q_image, t: PairTexts, scale) -> CounterfactualLosses:
    """The module docstring's objective: images of P and Q (B, E) each, normalised, against their texts;
    `scale` the logit scale."""
    p_caption, q_caption, negated, false_negated, no_y, no_x = t
    anchor = in_batch_contrastive(torch.cat([p_image, q_image]), torch.cat([p_caption, q_caption]), scale)  # 2B pairs
    return CounterfactualLosses(
        anchor, choose_first(p_image, [negated, false_negated, q_caption], scale),
        (choose_first(no_y, [p_image, q_image], scale) + choose_first(no_x, [q_image, p_image], scale)) / 2,
        (choose_first(p_image, [no_y, no_x], scale) + choose_first(q_image, [no_x, no_y], scale)) / 2)
