"""Object metrics for the demo world: which objects a caption names, compared with boxes.json as
multisets, so that a repeat and an omission both count.

A *mention* is a shape word with its colour, in every phrasing the world's captions use: "a small red
circle", "red circle", "a large circle coloured red", "two shapes: a red circle and ...". A shape word
without a colour is a mention of that shape in any colour.

Against an image's objects (a multiset of (colour, shape)), each mention is, in caption order:
- *matched*: it takes an object of its colour and shape that no earlier mention took;
- *repeated*: the image holds its type, but every object of it is already taken ("a blue heart and a
  blue heart" where there is one blue heart);
- *hallucinated*: the image holds no object of its type (colour and shape; a wrong colour counts here).
Objects no mention takes are *omitted*.

Per set of captions: precision = matched / mentions, recall = matched / objects, F1 = 2 matched /
(mentions + objects), exact scene = every object matched and nothing else mentioned, CHAIR-i =
hallucinated / mentions and CHAIR-s = captions with a hallucination / captions (Rohrbach et al. 2018,
with (colour, shape) as the object type), and the share of captions that repeat a present object.
Every one is a ratio of per-image sums, so `stats` bootstraps it over images.

The failure anatomy sorts every caption into one of `ANATOMY` (they partition the captions): exact; too
few mentions for the image's objects; too many; the right number with an object named twice (and so
another missed); the right number, none repeated, with a colour or shape that the image does not hold
(attributes swapped between objects, or one object named wrong).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.results import Share
from ..demo.phrasing import Mention, mentions
from ..demo.world import Obj, boxes_for
from . import stats

# metric -> (numerator, denominator) of the per-image counts; every metric is sum(num) / sum(den)
METRICS = {
    "exact": ("exact", "images"),  # whole scene named exactly
    "recall": ("matched", "objects"),
    "precision": ("matched", "mentions"),
    "f1": ("matched2", "mentions_objects"),
    "chair_i": ("hallucinated", "mentions"),
    "chair_s": ("hallucinating", "images"),
    "repeats": ("repeating", "images"),  # captions that repeat a present object
    "right_count": ("right_count", "images"),  # captions naming as many objects as the image holds
    # the failure anatomy (`failure_kind`): with "exact", shares of the captions that sum to one
    "too_few": ("too_few", "images"),
    "too_many": ("too_many", "images"),
    "repeat_right_count": ("repeat_right_count", "images"),
    "swapped": ("swapped", "images"),
}
ANATOMY = ("exact", "too_few", "too_many", "repeat_right_count", "swapped")  # the kinds of `failure_kind`
HEADLINE = ("exact", "recall", "precision", "chair_s", "repeats", "right_count")  # compared paired across rows


@dataclass(frozen=True)
class CaptionObjects:
    """One caption against its image."""
    mentions: int
    objects: int
    matched: int
    repeated: int
    hallucinated: int

    @property
    def omitted(self) -> int:
        return self.objects - self.matched

    @property
    def exact(self) -> bool:
        return self.matched == self.objects == self.mentions


def match(found: list[Mention], objects: Sequence[Obj]) -> list[str]:
    """Each mention's fate against the image's objects as multisets: "matched", "repeated" or
    "hallucinated" (in the order of `found`). Coloured mentions take their objects first, then
    colourless ones take any remaining object of their shape."""
    left = Counter((o.color, o.shape) for o in objects)
    held = set(left)
    fate = [""] * len(found)
    for j in sorted(range(len(found)), key=lambda j: found[j].color is None):
        m = found[j]
        if m.color is not None:
            key = (m.color, m.shape) if left[(m.color, m.shape)] > 0 else None
            present = (m.color, m.shape) in held
        else:
            key = next((k for k in sorted(left) if k[1] == m.shape and left[k] > 0), None)
            present = any(k[1] == m.shape for k in held)
        if key is not None:
            left[key] -= 1
        fate[j] = "matched" if key is not None else "repeated" if present else "hallucinated"
    return fate


def failure_kind(s: CaptionObjects) -> str:
    """Which of `ANATOMY` a caption is: exact, or how it fails (the count first, then what is wrong at the
    right count)."""
    if s.exact:
        return "exact"
    if s.mentions != s.objects:
        return "too_few" if s.mentions < s.objects else "too_many"
    return "repeat_right_count" if s.repeated else "swapped"


def score_caption(found: list[Mention], objects: Sequence[Obj]) -> CaptionObjects:
    """Mentions against the image's objects as multisets (`match`)."""
    fate = match(found, objects)
    return CaptionObjects(len(found), len(objects), fate.count("matched"), fate.count("repeated"),
                          fate.count("hallucinated"))


@dataclass
class ObjectCounts:
    """Per-image counts of a set of captions (arrays in sorted key order), and each image's object count."""
    keys: list[str]
    counts: dict[str, np.ndarray]  # count name (METRICS' numerators and denominators) -> (N,)
    n_objects: np.ndarray  # (N,) objects in each image

    def ratio(self, metric: str, subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        num, den = METRICS[metric]
        sel = slice(None) if subset is None else subset
        return self.counts[num][sel], self.counts[den][sel]

    def summary(self, subset: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0) -> dict[str, Share]:
        """Every metric's pooled value and 95% interval over images (of `subset`, a boolean mask)."""
        out = {}
        for metric in METRICS:
            num, den = self.ratio(metric, subset)
            total = float(den.sum())
            share = None if total == 0 else float(num.sum() / total)
            ci = None if total == 0 else stats.bootstrap_ci(num, den, n_boot=n_boot, seed=seed)
            out[metric] = Share(share, ci, int(num.sum()), int(total))
        return out

    def by_object_count(self, n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, Share]]:
        """`summary` for the images holding 1, 2, 3, ... objects (keys as strings, for JSON)."""
        return {str(n): self.summary(self.n_objects == n, n_boot, seed) for n in sorted(set(self.n_objects.tolist()))}


def object_counts(predictions: dict[str, str], boxes: Mapping[str, Sequence[Obj]], shapes, colors,
                  split: str = "val") -> ObjectCounts:
    """Per-image object counts of `predictions` (stem -> caption), in sorted key order."""
    keys = sorted(predictions)
    per = []
    n_obj = []
    for k in keys:
        objs = boxes_for(k, boxes, split)
        s = score_caption(mentions(predictions[k], shapes, colors), objs)
        n_obj.append(len(objs))
        kind = failure_kind(s)
        per.append({"images": 1, "matched": s.matched, "objects": s.objects,
                    "mentions": s.mentions, "matched2": 2 * s.matched, "mentions_objects": s.mentions + s.objects,
                    "hallucinated": s.hallucinated, "hallucinating": int(s.hallucinated > 0),
                    "repeating": int(s.repeated > 0), "right_count": int(s.mentions == s.objects)}
                   | {k: int(kind == k) for k in ANATOMY})
    names = {n for pair in METRICS.values() for n in pair}
    return ObjectCounts(keys, {n: np.array([p[n] for p in per], dtype=np.int64) for n in names},
                        np.array(n_obj, dtype=np.int64))
