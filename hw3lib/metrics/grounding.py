"""Caption grounding on the demo world: do a caption's words name objects that are in the image?

CIDEr rewards n-grams shared with the references, so a captioner that gets every colour and sentence
template right but names the wrong shapes still scores well. Grounding asks the boxes instead
(`boxes.json`: per image, each object's `shape`, `color` and `box`):

- a *mention* is a shape word named with its colour, in every phrasing the captions use ("a small red
  circle", "a large circle coloured red": `demo.phrasing`, the one reading of them); it is right
  when the image holds an object of that colour and that shape;
- a *shape word* is right when the image holds an object of that shape; a *colour word* likewise.

Scores are pooled shares over images (right / total), and per-image counts are kept so that `stats`
can bootstrap them over images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.results import Interval, Share
from ..demo.phrasing import mention_positions, words
from ..demo.world import Obj, boxes_for
from . import stats

KINDS = ("mentions", "shapes", "colors")  # what is counted


@dataclass
class ImageGrounding:
    right: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # words that match an object
    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))  # words found


def ground_caption(caption: str, objects: Sequence[Obj], shapes: list[str], colors: list[str]) -> ImageGrounding:
    """Counts for one caption against the objects of its image."""
    have_shapes = {o.shape for o in objects}
    have_colors = {o.color for o in objects}
    have_pairs = {(o.color, o.shape) for o in objects}
    shape_set, color_set = set(shapes), set(colors)
    g = ImageGrounding()
    w = words(caption)
    for word in w:
        if word in shape_set:
            g.total["shapes"] += 1
            g.right["shapes"] += word in have_shapes
        if word in color_set:
            g.total["colors"] += 1
            g.right["colors"] += word in have_colors
    for _, m in mention_positions(w, shapes, colors):
        if m.color is not None:
            g.total["mentions"] += 1
            g.right["mentions"] += (m.color, m.shape) in have_pairs
    return g


@dataclass
class Grounding:
    keys: list[str]  # images, in the order of the arrays
    right: dict[str, np.ndarray]  # kind -> (N,) words right per image
    total: dict[str, np.ndarray]  # kind -> (N,) words per image

    def share(self, kind: str) -> float | None:
        """Pooled share right (None where no caption has such a word)."""
        t = int(self.total[kind].sum())
        return None if t == 0 else float(self.right[kind].sum() / t)

    def interval(self, kind: str, n_boot: int = 2000, seed: int = 0) -> Interval | None:
        if int(self.total[kind].sum()) == 0:
            return None
        return stats.bootstrap_ci(self.right[kind], self.total[kind], n_boot=n_boot, seed=seed)

    def summary(self, n_boot: int = 2000, seed: int = 0) -> dict[str, Share]:
        """Every kind's share, interval and counts."""
        return {k: Share(self.share(k), self.interval(k, n_boot, seed), int(self.right[k].sum()),
                         int(self.total[k].sum())) for k in KINDS}


def grounding(predictions: dict[str, str], boxes: Mapping[str, Sequence[Obj]], shapes: list[str], colors: list[str],
              split: str = "val") -> Grounding:
    """Per-image grounding counts of `predictions` (stem -> caption), in sorted key order."""
    keys = sorted(predictions)
    per = [ground_caption(predictions[k], boxes_for(k, boxes, split), shapes, colors) for k in keys]
    return Grounding(keys, {k: np.array([g.right[k] for g in per]) for k in KINDS},
                     {k: np.array([g.total[k] for g in per]) for k in KINDS})
