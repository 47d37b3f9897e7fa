"""Relation accuracy: is a relation a caption states between two objects true of the image?

As ARO's VG-Relation checks a relation against the scene's annotation (Yuksekgonul et al. 2023), each
"X to the left of / to the right of / above / below Y" of a generated caption is checked against the
objects' boxes (boxes.json): true when X's centre lies on that side of Y's centre (left: smaller x, above:
smaller y). The two objects are the phrases around the relation ("a red circle above a blue star"); "it"
after the relation refers to the phrase before the subject ("a red circle with a blue star above it").

A relation is *checkable* when each of its phrases names exactly one object of the image (colour and
shape, and size where the phrase gives one) and the two differ; the others (an object that is not there,
two objects the phrase fits) are counted apart, not as false.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..demo.phrasing import Phrase, Relation, holds, stated_relations
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


def relation_counts(predictions: Mapping[str, str], boxes: Mapping[str, Sequence[Obj]], shapes, colors,
                    split: str = "val") -> RelationCounts:
    keys = sorted(predictions)
    rows = []
    for k in keys:
        objs = boxes_for(k, boxes, split)
        verdicts = [check(r, objs) for r in stated_relations(predictions[k], shapes, colors)]
        rows.append((len(verdicts), sum(v is not None for v in verdicts), sum(v is True for v in verdicts)))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return RelationCounts(keys, arr[:, 0], arr[:, 1], arr[:, 2])
