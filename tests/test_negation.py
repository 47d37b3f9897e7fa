"""Negated captions, the multiple-choice items and their scorer, on hand-made cases."""

import re

import numpy as np
import pytest
import torch

from hw3lib.demo.world import COLORS, SHAPES, Obj, draw_scene, make_captions
from hw3lib.zeroshot.negation import (
    FALSE_CHOICES,
    QUESTION_TYPES,
    absent_shapes,
    choice_correct,
    choice_item,
    choice_items,
    multiple_choice,
    recall_at_1,
)


def _scenes(n=300):
    for i in range(n):
        rng = np.random.default_rng([5, i])
        _, objs = draw_scene(rng, 96, 1 + i % 3)
        yield rng, objs, make_captions(rng, objs, 96, 1)[0]


def test_a_scene_holding_every_shape_gets_no_item():
    rng = np.random.default_rng(0)
    assert absent_shapes(set(SHAPES), SHAPES) == []
    every_shape = [Obj(s, "red", "small", (0, 0, 1, 1)) for s in SHAPES]
    assert choice_item("x.jpg", every_shape, SHAPES, list(COLORS), 0, rng) is None


def _truth(statement: str, objects: list[dict]) -> bool:
    """A hand-written reader of the test's three statement forms."""
    present = {(o.color, o.shape) for o in objects}
    shapes = {o.shape for o in objects}

    def has(phrase):  # "red circle" or "circle"
        w = phrase.split()
        return (w[0], w[1]) in present if len(w) == 2 else w[0] in shapes

    if m := re.fullmatch(r"there is no (\w+)", statement):
        return not has(m[1])
    if m := re.fullmatch(r"there is a (\w+(?: \w+)?)", statement):
        return has(m[1])
    if m := re.fullmatch(r"a (\w+ \w+) and no (\w+)", statement):
        return has(m[1]) and not has(m[2])
    raise AssertionError(f"unexpected statement {statement!r}")


def test_every_item_has_exactly_one_true_statement():
    boxes = [list(objs) for _, objs, _ in _scenes(120)]
    items = choice_items(boxes, [f"{i}.jpg" for i in range(len(boxes))], SHAPES, list(COLORS), seed=3)
    assert len(items) == len(boxes)
    assert [it.question_type for it in items[:6]] == [*QUESTION_TYPES, *QUESTION_TYPES]
    for it, objs in zip(items, boxes, strict=True):
        assert len(it.choices) == 1 + len(FALSE_CHOICES) and len(set(it.choices)) == len(it.choices)
        truth = [_truth(c, objs) for c in it.choices]
        assert truth == [i == it.answer for i in range(len(truth))], (it, objs)
    # an image without objects gets no item
    assert len(choice_items([[]] + boxes[:2], ["e.jpg", "0.jpg", "1.jpg"], SHAPES, list(COLORS))) == 2


def test_choice_scorer_on_known_embeddings():
    img = torch.eye(3)  # (N=3, D=3)
    choices = torch.zeros(3, 4, 3)  # (N, K, D)
    choices[0, 2, 0] = 1.0  # image 0 is closest to choice 2
    choices[1, 0, 1] = 1.0  # image 1 to choice 0
    choices[2, 3, 2] = 1.0  # image 2 to choice 3
    assert choice_correct(img, choices, [2, 0, 0]).tolist() == [True, True, False]

    class It:  # the scorer reads only these two fields
        def __init__(self, t):
            self.question_type, self.answer, self.choices = t, 0, ("a", "b", "c", "d")

    items = [It("affirmation"), It("negation"), It("negation")]
    choices = torch.zeros(3, 4, 3)
    choices[0, 0, 0] = choices[1, 0, 1] = choices[2, 1, 2] = 1.0  # right, right, wrong
    mc = multiple_choice(img, choices, items, n_boot=200)
    assert mc.accuracy.accuracy == pytest.approx(2 / 3) and mc.items == 3 and mc.chance == 0.25
    assert mc.by_type["affirmation"].accuracy == 1.0 and mc.by_type["negation"].accuracy == 0.5
    assert set(mc.by_type) == {"affirmation", "negation"}


def test_recall_at_1():
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # texts 2 and 3 swapped
    r = recall_at_1(img, txt, n_boot=200)
    assert r.accuracy == 0.5 and r.ci.low <= 0.5 <= r.ci.high
