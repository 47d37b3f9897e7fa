"""Choosing the checkpoint without the val images: a held-out slice of the training images, and what a
validation measures on it (CIDEr-D; on captions whose objects are known, the object metrics and where
the cross-attention points - the learning curves of the report).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..core.data import CaptionSet
from ..core.errors import HW3Error
from ..core.patches import PatchGrid
from ..core.tokenizer import teacher_forcing_batch
from ..metrics.captions import cider
from ..metrics.objects import object_counts
from ..models.decoding import OFF, Controls, greedy
from . import attention_losses as att_losses
from .loop import CaptionData, Objects

CURVE_METRICS = ("exact", "recall", "repeats")  # object metrics logged at each validation


def selection_split(cs: CaptionSet, n: int) -> tuple[CaptionSet, CaptionSet]:
    """(training images, `n` held-out images) of a training split. The held-out images are those whose
    file names hash lowest: the same for every run, whatever the file order, and spread over it."""
    if n >= len(cs):
        raise HW3Error(f"select_images={n}: the training split has only {len(cs)} images (hold out fewer)")
    ranked = sorted(cs.images, key=lambda im: hashlib.sha256(im.file_name.encode()).hexdigest())
    held = {im.key for im in ranked[:n]}
    return cs.subset(im.key for im in cs.images if im.key not in held), cs.subset(held)


@torch.no_grad()
def attention_pointing(model, data: CaptionData, features, batch_size: int = 64) -> dict[str, float]:
    """Teacher-forced on each image's first caption, the pointing game (`patches.points_at`, as P3 plays it)
    on the cross-attention averaged over layers and heads: is its most attended patch one the named object
    covers - at every position of the phrase
    naming it (`pointing_named`), and where the phrase begins, i.e. where the next object is chosen
    (`pointing_next`)? Plus the mean attention mass inside the box over the phrase (`box_mass`)."""
    first_caption = {}
    for c, (i, _) in enumerate(data.pairs):
        first_caption.setdefault(i, c)
    captions = list(first_caption.values())
    named, nxt, mass = [], [], []
    for s in range(0, len(captions), batch_size):
        chunk = captions[s:s + batch_size]
        pairs = [data.pairs[c] for c in chunk]
        feats = features([p[0] for p in pairs])
        x, _ = teacher_forcing_batch([t for _, t in pairs], data.eot, 10**6)
        _, atts = model(feats, x.to(feats.device), need_weights=True)
        att = att_losses.mean_map(atts).cpu()  # (B, T, S)
        where, inside, first = data.grounding.batch(chunk, [p[0] for p in pairs], x.shape[1], att.shape[-1])
        prefix = PatchGrid.of_tokens(att.shape[-1]).prefix
        named.append(att_losses.points_inside(att, where, inside, prefix))
        nxt.append(att_losses.points_inside(att, where, first, prefix))
        mass.append(att_losses.box_mass(att, where, inside))
    return {"pointing_named": _mean(named), "pointing_next": _mean(nxt), "box_mass": _mean(mass)}


def _mean(parts: list[torch.Tensor]) -> float:
    """The mean of every value in `parts` (NaN when there are none)."""
    values = torch.cat(parts).float()
    return float(values.mean()) if len(values) else float("nan")


def selection_validator(data: CaptionData, features, tokenizer, max_len: int = 60, batch_size: int = 32,
                        tokenizer_kind: str = "python", controls: Controls = OFF, objects: Objects | None = None):
    """A training-loop validator on held-out images `data` (`features(indices) -> (B, S, E)` gives their
    encoder tokens): greedy captions (with the decoding `controls`) scored by CIDEr-D against their
    references; with `objects` (and `data` grounded), also the object metrics of `CURVE_METRICS` and
    `attention_pointing`."""
    keys = [Path(p).stem for p in data.paths]

    def validate(model) -> dict:
        preds = {}
        for i in range(0, len(keys), batch_size):
            idx = list(range(i, min(i + batch_size, len(keys))))
            out = greedy(model, features(idx), tokenizer.eot_id, max_len, controls=controls)
            for j, toks in zip(idx, out.tokens, strict=True):
                preds[keys[j]] = tokenizer.decode(toks).strip()
        score, _ = cider(preds, dict(zip(keys, data.references, strict=True)), tokenizer_kind)
        result = {"cider": score, "example": preds[keys[0]]}
        if objects is not None and data.grounding is not None:
            counts = object_counts(preds, objects.boxes, objects.shapes, objects.colors, objects.split)
            for m in CURVE_METRICS:
                num, den = counts.ratio(m)
                result[m] = float(np.sum(num) / max(np.sum(den), 1))
            result |= attention_pointing(model, data, features)
        return result

    return validate
