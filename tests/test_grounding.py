"""Caption grounding: hand-made captions against hand-made boxes, with known answers."""

import numpy as np
import pytest

from hw3lib.demo.world import COLORS, SHAPES, Obj, boxes_for
from hw3lib.metrics.grounding import ground_caption, grounding
from hw3lib.metrics.stats import bootstrap_ci

OBJECTS = (Obj("circle", "red", "small", (0, 0, 10, 10)), Obj("star", "blue", "large", (20, 20, 40, 40)))


@pytest.mark.parametrize("caption, mentions, shapes, colors", [
    ("a small red circle to the left of a large blue star", (2, 2), (2, 2), (2, 2)),
    ("a red star and a blue circle", (0, 2), (2, 2), (2, 2)),  # both colours and shapes exist, pairs wrong
    ("a green circle", (0, 1), (1, 1), (0, 1)),
    ("a red moon above a blue star", (1, 2), (1, 2), (2, 2)),
    ("two shapes: a circle and a hexagon", (0, 0), (1, 2), (0, 0)),  # no colour before a shape: no mention
    ("a picture of one small red circle.", (1, 1), (1, 1), (1, 1)),
    ("Red Circle, BLUE star", (2, 2), (2, 2), (2, 2)),  # case and punctuation do not matter
    ("a reddish circles", (0, 0), (0, 0), (0, 0)),  # only whole words count
    ("", (0, 0), (0, 0), (0, 0)),
    # the world's "coloured" phrasing is a mention too (the reading objects.py uses; grounding once missed it)
    ("a large circle coloured red and a small star coloured red", (1, 2), (2, 2), (2, 2)),
])
def test_ground_caption(caption, mentions, shapes, colors):
    g = ground_caption(caption, OBJECTS, SHAPES, list(COLORS))
    assert (g.right["mentions"], g.total["mentions"]) == mentions
    assert (g.right["shapes"], g.total["shapes"]) == shapes
    assert (g.right["colors"], g.total["colors"]) == colors


def test_grounding_pools_over_images_and_bootstraps_them():
    boxes = {"val/a.jpg": OBJECTS, "val/b.jpg": [OBJECTS[0]], "val/c.png": [OBJECTS[1]]}
    preds = {"a": "a red circle and a blue star", "b": "a blue circle", "c": "a small blue star"}
    g = grounding(preds, boxes, SHAPES, list(COLORS))
    assert g.keys == ["a", "b", "c"]
    assert list(g.right["mentions"]) == [2, 0, 1] and list(g.total["mentions"]) == [2, 1, 1]
    assert g.share("mentions") == pytest.approx(3 / 4) and g.share("shapes") == 1.0
    assert g.share("colors") == pytest.approx(3 / 4)
    s = g.summary(n_boot=300, seed=0)
    assert s["mentions"].right == 3 and s["mentions"].total == 4
    assert s["mentions"].ci == bootstrap_ci(np.array([2, 0, 1]), np.array([2, 1, 1]), n_boot=300, seed=0)
    assert grounding({"b": "a shape"}, boxes, SHAPES, list(COLORS)).share("mentions") is None


def test_boxes_for_finds_stems_and_names_missing_ones():
    boxes = {"val/000000100002.jpg": OBJECTS, "x.png": []}
    assert boxes_for("000000100002", boxes) == OBJECTS and boxes_for("x", boxes) == []
    with pytest.raises(KeyError):
        boxes_for("nope", boxes)
