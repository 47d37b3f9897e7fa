"""Object metrics of the demo world (hw3lib/objects.py) on hand-made captions whose answers are known:
every phrasing the world's captions use, repeats, omissions, hallucinations, and the pooled metrics."""

import numpy as np
import pytest

from hw3lib.demo.world import COLORS, SHAPES, Obj, make_captions
from hw3lib.metrics.objects import Mention, mentions, object_counts, score_caption

C = list(COLORS)
def obj(shape, color):
    return Obj(shape, color, "small", (0, 0, 1, 1))


RING_HEART_RING = [obj("ring", "green"), obj("heart", "blue"), obj("ring", "purple")]


@pytest.mark.parametrize(("caption", "expected"), [
    ("a small red circle on a plain background", [("circle", "red")]),
    ("a large circle coloured red", [("circle", "red")]),
    ("a picture of one large purple heart", [("heart", "purple")]),
    ("two shapes: a small red circle and a large blue star", [("circle", "red"), ("star", "blue")]),
    ("three shapes: a red circle, a blue star and a white moon", [("circle", "red"), ("star", "blue"), ("moon", "white")]),
    ("a green ring to the left of a blue heart", [("ring", "green"), ("heart", "blue")]),
    ("there is a small ring in the top left", [("ring", None)]),
    ("a shape on a plain background", []),
])
def test_mentions_in_every_phrasing(caption, expected):
    assert mentions(caption, SHAPES, C) == [Mention(s, c) for s, c in expected]


def test_every_generated_caption_names_its_scene_exactly():
    """The world's own captions (every phrasing, 1-3 objects) are exact scenes by the metric."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        for _ in range(30):
            objs = [Obj(SHAPES[int(rng.integers(10))], C[int(rng.integers(len(C)))], "small", (0, 0, 8, 8))
                    for _ in range(n)]
            objs = [Obj(o.shape, o.color, o.size, (30 * i, 0, 30 * i + 8, 8)) for i, o in enumerate(objs)]
            truth = list(objs)
            for cap in make_captions(rng, objs, 96, 7):
                assert score_caption(mentions(cap, SHAPES, C), truth).exact, cap


@pytest.mark.parametrize(("caption", "matched", "repeated", "hallucinated", "omitted", "exact"), [
    ("a green ring, a blue heart and a purple ring", 3, 0, 0, 0, True),
    ("a green ring, a blue heart and a blue heart", 2, 1, 0, 1, False),  # the report's P3 caption: a repeat
    ("a green ring and a blue heart", 2, 0, 0, 1, False),  # an omission
    ("a green ring, a blue heart and a red star", 2, 0, 1, 1, False),  # a hallucinated type
    ("a green ring, a red heart and a purple ring", 2, 0, 1, 1, False),  # a wrong colour is a hallucination
    ("a ring, a blue heart and a ring", 3, 0, 0, 0, True),  # colourless mentions take either ring
    ("a ring, a ring, a ring and a blue heart", 3, 1, 0, 0, False),
])
def test_multiset_scoring_by_hand(caption, matched, repeated, hallucinated, omitted, exact):
    s = score_caption(mentions(caption, SHAPES, C), RING_HEART_RING)
    assert (s.matched, s.repeated, s.hallucinated, s.omitted, s.exact) == (matched, repeated, hallucinated, omitted,
                                                                           exact)


def test_pooled_metrics_and_breakdown_by_object_count():
    boxes = {"val/a.jpg": RING_HEART_RING, "val/b.jpg": [obj("star", "red")],
             "val/c.jpg": [obj("moon", "white"), obj("star", "red")]}
    preds = {"a": "a green ring, a blue heart and a blue heart",  # 2 matched, 1 repeat, 1 omitted
             "b": "a small red star",  # exact
             "c": "a white moon and a yellow cross"}  # 1 matched, 1 hallucinated, 1 omitted
    oc = object_counts(preds, boxes, SHAPES, C)
    s = oc.summary(n_boot=200)
    assert s["exact"].share == pytest.approx(1 / 3)
    assert s["recall"].share == pytest.approx(4 / 6) and s["precision"].share == pytest.approx(4 / 6)
    assert s["f1"].share == pytest.approx(2 * 4 / (6 + 6))
    assert s["chair_i"].share == pytest.approx(1 / 6) and s["chair_s"].share == pytest.approx(1 / 3)
    assert s["repeats"].share == pytest.approx(1 / 3)
    by = oc.by_object_count(n_boot=200)
    assert set(by) == {"1", "2", "3"} and by["1"]["exact"].share == 1.0 and by["3"]["exact"].share == 0.0
    assert by["2"]["recall"].share == pytest.approx(1 / 2) and by["3"]["repeats"].share == 1.0
    assert s["recall"].ci.low <= s["recall"].share <= s["recall"].ci.high


RED_CIRCLE_BLUE_SQUARE = [obj("circle", "red"), obj("square", "blue")]


@pytest.mark.parametrize(("caption", "kind"), [
    ("a red circle and a blue square", "exact"),
    ("a blue square and a large circle coloured red", "exact"),
    ("a red circle", "too_few"),
    ("a shape on a plain background", "too_few"),
    ("a red circle, a blue square and a green heart", "too_many"),
    ("a red circle, a blue square and a red circle", "too_many"),  # a repeat on top of the whole scene
    ("a red circle and a red circle", "repeat_right_count"),  # the square left out for a second circle
    ("a blue circle and a red square", "swapped"),  # colours swapped between the objects
    ("a red circle and a green square", "swapped"),  # one colour wrong
])
def test_the_failure_anatomy_on_hand_made_captions(caption, kind):
    from hw3lib.metrics.objects import failure_kind

    assert failure_kind(score_caption(mentions(caption, SHAPES, C), RED_CIRCLE_BLUE_SQUARE)) == kind


def test_the_anatomy_partitions_the_captions_of_each_scene_size():
    from hw3lib.metrics.objects import ANATOMY

    boxes = {"val/a.jpg": RED_CIRCLE_BLUE_SQUARE, "val/b.jpg": RED_CIRCLE_BLUE_SQUARE, "val/c.jpg": [obj("star", "red")],
             "val/d.jpg": RING_HEART_RING}
    preds = {"a": "a red circle", "b": "a red circle and a red circle", "c": "a red star",
             "d": "a green ring, a blue heart and a purple ring"}
    by = object_counts(preds, boxes, SHAPES, C).by_object_count(n_boot=50)
    assert {n: {k: by[n][k].right for k in ANATOMY} for n in by} == {
        "1": {"exact": 1, "too_few": 0, "too_many": 0, "repeat_right_count": 0, "swapped": 0},
        "2": {"exact": 0, "too_few": 1, "too_many": 0, "repeat_right_count": 1, "swapped": 0},
        "3": {"exact": 1, "too_few": 0, "too_many": 0, "repeat_right_count": 0, "swapped": 0}}
    assert all(sum(by[n][k].share for k in ANATOMY) == pytest.approx(1.0) for n in by)
    # "right count": the captions that are neither too few nor too many (b's repeat is at the right count)
    assert {n: by[n]["right_count"].right for n in by} == {"1": 1, "2": 1, "3": 1}
    assert all(by[n]["right_count"].share == pytest.approx(1 - by[n]["too_few"].share - by[n]["too_many"].share)
               for n in by)
