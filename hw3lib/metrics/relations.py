"""Relation accuracy: is a relation a caption states between two objects true of the image?

As ARO's VG-Relation checks a relation against the scene's annotation (Yuksekgonul et al. 2023), each
"X to the left of / to the right of / above / below Y" of a generated caption is checked against the
objects' boxes (boxes.json): true when X's centre lies on that side of Y's centre (left: smaller x, above:
smaller y). The two objects are the phrases around the relation ("a red circle above a blue star"); "it"
after the relation refers to the phrase before the subject ("a red circle with a blue star above it").

A relation is *checkable* when each of its phrases names exactly one object of the image (colour and
shape, and size where the phrase gives one) and the two differ; the others (an object that is not there,
two objects the phrase fits) are counted apart, not as false.

Regions ("a red circle in the top left", "near the bottom") are checked by the grammar's own rule
(`phrasing.region`: the object's centre in a third of the image), a region statement being checkable when
its phrase names exactly one object. `spatial_counts` counts each relation word and regions apart: a
captioner that says "to the right of" whatever the image shows is seen by its words, not only its total.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..demo.phrasing import (
    RELATION_WORDS,
    Phrase,
    RegionStatement,
    Relation,
    holds,
    region,
    stated_regions,
    stated_relations,
)
from ..demo.world import Obj, boxes_for


def _the_object(p: Phrase, objects: Sequence[Obj]) -> int | None:
    fits = [k for k, o in enumerate(objects) if p.fits(o)]
    return fits[0] if len(fits) == 1 else None


def check(rel: Relation, objects: Sequence[Obj]) -> bool | None:
    """True / False for a checkable relation, None when its phrases do not pick two objects."""
    a, b = _the_object(rel.subject, objects), _the_object(rel.object, objects)
    if a is None or b is None or a == b:
        return None
    return holds(rel.relation, objects[a], objects[b])


def check_region(st: RegionStatement, objects: Sequence[Obj], side: int) -> bool | None:
    """True / False for a checkable region statement in a `side`-pixel image, None when its phrase does not
    pick one object."""
    k = _the_object(st.subject, objects)
    return None if k is None else region(objects[k], side) == st.region


SPATIAL_KINDS = (*RELATION_WORDS, "region")  # left, right, above, below: relation words; region statements


@dataclass(frozen=True)
class RelationCounts:
    """Per image (sorted key order): relations stated, checkable, true."""
    keys: list[str]
    stated: np.ndarray  # (N,)
    checkable: np.ndarray  # (N,)
    true: np.ndarray  # (N,)

    @property
    def accuracy(self) -> float | None:
        """True / checkable, pooled over images (None: no checkable relation)."""
        n = int(self.checkable.sum())
        return None if n == 0 else float(self.true.sum() / n)


def spatial_counts(predictions: Mapping[str, str], boxes: Mapping[str, Sequence[Obj]], shapes, colors,
                   side: int | None, split: str = "val") -> dict[str, RelationCounts]:
    """Per kind of `SPATIAL_KINDS` (each relation word, and regions), per image: statements made,
    checkable, true. Regions are counted only where the image side is known (`side`)."""
    keys = sorted(predictions)
    counts = np.zeros((len(keys), len(SPATIAL_KINDS), 3), dtype=np.int64)  # (N, K, stated/checkable/true)
    column = {kind: j for j, kind in enumerate(SPATIAL_KINDS)}
    for n, k in enumerate(keys):
        objs = boxes_for(k, boxes, split)
        verdicts = [(r.relation, check(r, objs)) for r in stated_relations(predictions[k], shapes, colors)]
        if side is not None:
            verdicts += [("region", check_region(st, objs, side)) for st in stated_regions(predictions[k], shapes,
                                                                                            colors)]
        for kind, v in verdicts:
            counts[n, column[kind]] += (1, v is not None, v is True)
    return {kind: RelationCounts(keys, counts[:, j, 0], counts[:, j, 1], counts[:, j, 2])
            for j, kind in enumerate(SPATIAL_KINDS) if kind != "region" or side is not None}


def relation_counts(predictions: Mapping[str, str], boxes: Mapping[str, Sequence[Obj]], shapes, colors,
                    split: str = "val") -> RelationCounts:
    """Every relation word together (`spatial_counts`' relation kinds, summed per image)."""
    by = spatial_counts(predictions, boxes, shapes, colors, None, split)
    keys = sorted(predictions)
    return RelationCounts(keys, *(sum((getattr(by[w], f) for w in RELATION_WORDS), np.zeros(len(keys), np.int64))
                                  for f in ("stated", "checkable", "true")))
