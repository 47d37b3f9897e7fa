"""Counting (hw3lib/zeroshot/counting.py, world.fewer_objects / more_objects): the counting-contrastive
loss on hand-made embeddings, the CountBench-style accuracy on hand-made features, and counterfactual
scenes with an object really removed or added (checked from the boxes and the pixels)."""

import math

import numpy as np
import pytest
import torch

from hw3lib.demo.world import GRID, SHAPES, _origin, draw_scene, fewer_objects, more_objects, render_objects
from hw3lib.zeroshot.counting import count_accuracy, count_prompts, counting_contrastive

SIDE = 96


def test_counting_contrastive_on_hand_made_embeddings():
    e = torch.eye(3, dtype=torch.float64)
    img, txt = e[[0]], e[[0]]
    s = 10.0
    one = counting_contrastive(img, txt, e[[1]][None], s)
    assert one.item() == pytest.approx(math.log(1 + math.exp(-s)))  # its own text at cosine 1, the other 0
    two = counting_contrastive(img, txt, torch.stack([e[[1]], e[[2]]]), s)
    assert two.item() == pytest.approx(math.log(1 + 2 * math.exp(-s)))
    same = counting_contrastive(img, txt, txt[None], s)  # a text tower blind to the number: chance
    assert same.item() == pytest.approx(math.log(2))
    wrong = counting_contrastive(img, e[[1]], e[[0]][None], s)  # the image sits on the wrong count
    assert wrong.item() == pytest.approx(math.log(1 + math.exp(s)))


def test_count_accuracy_on_hand_made_features():
    prompts = torch.eye(3)  # one, two, three
    images = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0.2, 1], [0.9, 0.1, 0]])  # predicted 1, 2, 3, 1
    got = count_accuracy(images, prompts, np.array([1, 2, 2, 3]), [1, 2, 3], n_boot=50)
    assert got.accuracy.accuracy == pytest.approx(0.5) and got.by_count == {"1": 1.0, "2": 0.5, "3": 0.0}
    assert got.chance == pytest.approx(1 / 3) and got.n == 4
    assert count_prompts([1, 3]) == ["a picture of one shape", "a picture of three shapes"]


def test_counterfactual_scenes_have_one_object_fewer_or_more():
    rng = np.random.default_rng(0)
    made = 0
    for i in range(40):
        _, objs = draw_scene(np.random.default_rng(i), SIDE, 1 + i % 3)
        fewer = fewer_objects(objs, rng)
        assert len(fewer) == len(objs) - 1 and all(o in objs for o in fewer)
        more = more_objects(SIDE, objs, rng)
        if more is None:
            continue
        made += 1
        assert len(more) == len(objs) + 1 and more[:-1] == objs and more[-1].shape in SHAPES
        x0, y0, px = _origin(more[-1], SIDE)
        bx0, by0, bx1, by1 = more[-1].box
        assert x0 <= bx0 < bx1 <= x0 + px and y0 <= by0 < by1 <= y0 + px and x0 + px <= SIDE and y0 + px <= SIDE
        for o in objs:  # its square touches no other object's square
            qx, qy, qs = _origin(o, SIDE)
            assert x0 + px <= qx or qx + qs <= x0 or y0 + px <= qy or qy + qs <= y0
        # drawn: with the same draws, the two images differ inside the new square only
        a = np.asarray(render_objects(np.random.default_rng(5), SIDE, objs), dtype=np.int16)
        b = np.asarray(render_objects(np.random.default_rng(5), SIDE, more), dtype=np.int16)
        diff = np.abs(a - b).sum(-1) > 30
        ys, xs = np.nonzero(diff)
        assert diff[by0:by1, bx0:bx1].mean() > 0.2
        assert x0 - 2 <= xs.min() and xs.max() < x0 + px + 2 and y0 - 2 <= ys.min() and ys.max() < y0 + px + 2
    assert made > 30 and SIDE // GRID == 12
