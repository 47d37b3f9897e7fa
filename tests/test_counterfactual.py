"""Counterfactual pairs (an object added or removed, checked from the boxes), the training objective on
hand-made embeddings, and the inference-time sign baseline."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hw3lib.demo.world import SHAPES, Obj, _origin, draw_scene
from hw3lib.zeroshot.counterfactual import PairTexts, counterfactual_losses, counterfactual_pair, render_pair
from hw3lib.zeroshot.negation import negation_by_sign

SIDE = 96


def _pairs(n=120):
    for i in range(n):
        rng = np.random.default_rng([11, i])
        _, objs = draw_scene(rng, SIDE, 1 + i % 3)
        yield objs, counterfactual_pair(objs, SHAPES, SIDE, rng), i


def _square_mask(o: Obj):
    x0, y0, px = _origin(o, SIDE)
    m = np.zeros((SIDE, SIDE), bool)
    m[y0:y0 + px, x0:x0 + px] = True
    return m


def test_pairs_differ_in_exactly_one_object_shape():
    seen = set()
    for objs, pair, _i in _pairs():
        if pair is None:  # every shape of the scene occurs twice or more
            assert all(sum(o.shape == p.shape for o in objs) > 1 for p in objs)
            continue
        p, q = pair.p_objects, pair.q_objects
        assert p == tuple(objs) and len(q) == len(p)
        changed = [k for k in range(len(p)) if p[k] != q[k]]
        assert len(changed) == 1
        k = changed[0]
        assert (p[k].shape, q[k].shape) == (pair.x, pair.y) and (p[k].color, p[k].size) == (q[k].color, q[k].size)
        assert _origin(p[k], SIDE) == _origin(q[k], SIDE)  # the same grid square
        assert [o.shape for o in p].count(pair.x) == 1 and pair.y not in {o.shape for o in p}  # P: x, no y
        assert pair.x not in {o.shape for o in q} and [o.shape for o in q].count(pair.y) == 1  # Q: y, no x
        for caps, os in ((pair.p_captions, p), (pair.q_captions, q)):  # descriptions name every object
            assert all(o.shape in c for c in caps for o in os)
        seen.add(len(objs))
    assert seen == {1, 2, 3}


def test_rendered_pair_differs_only_where_the_object_was_redrawn():
    for _objs, pair, i in list(_pairs(30)):
        if pair is None:
            continue
        p_img, q_img = render_pair(pair, SIDE, [3, i])
        diff = np.abs(np.asarray(p_img, np.int16) - np.asarray(q_img, np.int16)).max(-1)  # (H, W)
        k = next(k for k in range(len(pair.p_objects)) if pair.p_objects[k] != pair.q_objects[k])
        square = _square_mask(pair.q_objects[k])
        near = np.zeros_like(square)  # the blur spreads the object a few pixels
        ys, xs = np.nonzero(square)
        near[max(0, ys.min() - 3):ys.max() + 4, max(0, xs.min() - 3):xs.max() + 4] = True
        assert diff[~near].max() == 0 and diff[near].max() > 20  # the object really changed
        again = render_pair(pair, SIDE, [3, i])
        assert again[0].tobytes() == p_img.tobytes() and again[1].tobytes() == q_img.tobytes()


def test_no_pair_when_every_shape_repeats():
    rng = np.random.default_rng(0)
    same = [Obj("star", c, "small", (0, 0, 24, 24)) for c in ("red", "blue", "green")]  # three stars
    assert counterfactual_pair(same, SHAPES, SIDE, rng) is None


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_objective_on_hand_made_embeddings():
    # one pair, orthonormal directions: P image = e0, Q image = e1; texts point where they should
    e = torch.eye(4, dtype=torch.float64)
    p_img, q_img = e[[0]], e[[1]]
    p_cap, q_cap = e[[0]], e[[1]]
    neg, false_neg = e[[0]], e[[2]]
    no_y, no_x = e[[0]], e[[1]]  # "no y" goes with P (which lacks y), "no x" with Q
    scale = 10.0
    got = counterfactual_losses(p_img, q_img, PairTexts(p_cap, q_cap, neg, false_neg, no_y, no_x), scale)
    # anchor: 2 images x 2 captions, each image's own caption at cosine 1, the other 0
    ce = -math.log(math.exp(10) / (math.exp(10) + 1))
    assert got.anchor.item() == pytest.approx(ce, rel=1e-9)
    # choose_text: P vs [neg (1), false_neg (0), q_cap (0)]
    assert got.choose_text.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), rel=1e-9)
    # choose_image: "no y" vs [P (1), Q (0)] and "no x" vs [Q (1), P (0)]; distractor: the same from the images
    assert got.choose_image.item() == pytest.approx(ce, rel=1e-9)
    assert got.distractor.item() == pytest.approx(ce, rel=1e-9)
    assert got.total.item() == pytest.approx(ce + (got.choose_text.item() + 2 * ce) / 3, rel=1e-9)
    # a text tower that ignores "no": the negation equals the false one, so choose_text is at chance or worse
    blind = counterfactual_losses(p_img, q_img, PairTexts(p_cap, q_cap, e[[2]], e[[2]], no_y, no_x), scale)
    assert blind.choose_text.item() > math.log(2)
    # negations that point at the object they deny ("no y" at Q): both image and text choices are lost
    wrong = counterfactual_losses(p_img, q_img, PairTexts(p_cap, q_cap, neg, false_neg, no_x, no_y), scale)
    assert wrong.choose_image.item() > 5 and wrong.distractor.item() > 5
    # "no y" and "no x" the same text (the shape word unread): both choices at exactly chance
    unread = counterfactual_losses(p_img, q_img, PairTexts(p_cap, q_cap, neg, false_neg, e[[3]], e[[3]]), scale)
    assert unread.choose_image.item() == pytest.approx(math.log(2)) and unread.distractor.item() == pytest.approx(math.log(2))


def test_objective_gradients_reach_every_input():
    torch.manual_seed(0)
    xs = [F.normalize(torch.randn(5, 8), dim=-1).requires_grad_() for _ in range(8)]
    counterfactual_losses(xs[0], xs[1], PairTexts(*xs[2:]), 5.0).total.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)


@pytest.mark.parametrize(("text", "parts"), [
    ("a red circle and no star", [(1.0, "a red circle"), (-1.0, "there is a star")]),
    ("there is no star", [(-1.0, "there is a star")]),
    ("This is not a photo of circle", [(-1.0, "This is a photo of circle")]),
    ("there is a red circle", [(1.0, "there is a red circle")]),
])
def test_negation_by_sign(text, parts):
    assert negation_by_sign(text) == parts


def test_sign_features_are_signed_sums(small_models):
    from hw3lib.core.manifest import load_manifest
    from hw3lib.models.clip import encode_texts
    from hw3lib.models.loading import load_clip
    from hw3lib.zeroshot.negation import sign_text_features

    clip = load_clip(load_manifest(small_models).clip)
    got = sign_text_features(clip, ["a red circle and no star", "there is no ring", "there is a ring"])
    f = encode_texts(clip, ["a red circle", "there is a star", "there is a ring"])
    assert torch.allclose(got[0], f[0] - f[1], atol=1e-6)
    assert torch.allclose(got[1], -f[2], atol=1e-6) and torch.allclose(got[2], f[2], atol=1e-6)
