"""Spatial accuracy (#47): each relation word and the region statements of a caption, checked against the
boxes by the grammar's own rules, on hand-made captions and boxes with known answers."""

from dataclasses import replace

import numpy as np
import pytest

from hw3lib.demo.phrasing import stated_regions
from hw3lib.demo.world import Obj
from hw3lib.metrics.relations import SPATIAL_KINDS, check_region, spatial_counts
from hw3lib.training.mirror import mirror_box

SHAPES, COLORS, SIDE = ["circle", "star", "square"], ["red", "blue", "green"], 96
RED = Obj("circle", "red", "small", (0, 0, 24, 24))  # centre (12, 12): the top left
BLUE = Obj("star", "blue", "small", (72, 36, 96, 60))  # centre (84, 48): the right
SCENE = (RED, BLUE)


def test_region_statements_are_read_by_the_grammar():
    found = stated_regions("a red circle in the top left of the picture and a blue star in the right", SHAPES, COLORS)
    assert [(s.subject.shape, s.region) for s in found] == [("circle", "top left"), ("star", "right")]
    assert [s.region for s in stated_regions("one red circle near the bottom", SHAPES, COLORS)] == ["bottom"]
    assert [s.region for s in stated_regions("there is a small red circle in the centre", SHAPES, COLORS)] == ["centre"]
    assert stated_regions("a red circle to the left of a blue star", SHAPES, COLORS) == []  # a relation, no region
    assert stated_regions("a red circle in the picture", SHAPES, COLORS) == []


@pytest.mark.parametrize("caption, verdict", [("a red circle in the top left", True), ("a red circle near the top", False),
                                              ("a blue star in the right of the picture", True),
                                              ("a blue star in the bottom right", False),
                                              ("a green circle in the top left", None), ("a circle in the top left", True)])
def test_a_region_is_true_where_the_objects_centre_lies(caption, verdict):
    (st,) = stated_regions(caption, SHAPES, COLORS)
    assert check_region(st, SCENE, SIDE) is verdict


def _counts(preds, scene):
    return spatial_counts(preds, {f"val/{k}.png": scene for k in preds}, SHAPES, COLORS, SIDE)


def test_each_relation_word_and_region_is_counted_apart():
    preds = {"a": "a red circle to the left of a blue star", "b": "a blue star to the left of a red circle",
             "c": "a red circle above a blue star", "d": "a red circle in the top left and a blue star in the left",
             "e": "a green square below a red circle"}
    c = _counts(preds, SCENE)
    assert set(c) == set(SPATIAL_KINDS)
    table = {k: (int(v.stated.sum()), int(v.checkable.sum()), int(v.true.sum())) for k, v in c.items()}
    assert table == {"left": (2, 2, 1), "right": (0, 0, 0), "above": (1, 1, 1), "below": (1, 0, 0),
                     "region": (2, 2, 1)}
    assert c["left"].stated.tolist() == [1, 1, 0, 0, 0]  # per image, in key order
    assert c["right"].accuracy is None and c["region"].accuracy == 0.5


def test_a_mirrored_scene_turns_every_true_side_statement_false():
    preds = {"a": "a red circle to the left of a blue star", "b": "a blue star to the right of a red circle",
             "c": "a red circle in the top left and a blue star in the right"}
    mirrored = tuple(replace(o, box=mirror_box(o.box, SIDE)) for o in SCENE)
    before, after = _counts(preds, SCENE), _counts(preds, mirrored)
    for kind in ("left", "right", "region"):
        assert before[kind].true.sum() == before[kind].checkable.sum() > 0
        assert after[kind].true.sum() == 0 and after[kind].checkable.sum() == before[kind].checkable.sum()


def test_without_the_image_side_regions_are_not_counted():
    c = spatial_counts({"a": "a red circle in the top left"}, {"val/a.png": SCENE}, SHAPES, COLORS, None)
    assert "region" not in c and all(v.stated.sum() == 0 for v in c.values())


def test_the_summary_shows_each_kind_per_row():
    from hw3lib.app.summary import spatial_lines
    from hw3lib.captioning.scoring import statements
    from hw3lib.core.results import VariantRow, VariantTable

    c = _counts({"a": "a red circle to the left of a blue star", "b": "a blue star to the left of a red circle",
                 "c": "a red circle in the top left"}, SCENE)
    row = VariantRow("lora16", 1.0, 1.0, spatial={k: statements(v, n_boot=200) for k, v in c.items()})
    assert row.spatial["left"].cell() == "1/2 of 2 (50.0%)" and row.spatial["right"].cell() == "0/0 of 0"
    assert row.spatial["left"].ci is not None and row.spatial["right"].ci is None
    again = VariantRow.from_json(row.to_json())
    assert again.spatial == row.spatial  # the record round-trips through summary.json
    lines = spatial_lines(VariantTable([row], None, None, None))
    assert lines[-1] == "| lora16 | 1/2 of 2 (50.0%) | 0/0 of 0 | 0/0 of 0 | 0/0 of 0 | 1/1 of 1 (100.0%) |"
    assert spatial_lines(VariantTable([VariantRow("x", 1.0, 1.0)], None, None, None)) == []
    assert np.isclose(row.spatial["region"].share, 1.0)
