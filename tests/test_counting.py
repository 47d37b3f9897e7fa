"""Counting (hw3lib/zeroshot/counting.py, world.fewer_objects / more_objects, pretraining/count_tuning.py):
the counting-contrastive loss on hand-made embeddings, the CountBench-style accuracy on hand-made features,
counterfactual scenes with an object really removed or added (checked from the boxes and the pixels), and
the count statements and losses the count-aware CLIP trains on."""

import math

import numpy as np
import pytest
import torch

from hw3lib.demo.phrasing import COUNT_STATEMENTS, COUNT_WORDS, mentions, stated_count, words
from hw3lib.demo.world import (
    COLORS,
    GRID,
    SHAPES,
    _origin,
    draw_scene,
    fewer_objects,
    more_objects,
    render_objects,
)
from hw3lib.pretraining.count_tuning import MAX_COUNT, count_losses, count_scenes, count_texts
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


def test_count_statements_state_a_count_and_name_no_object():
    """A false statement cannot be refuted by its text: it lists no object, and two statements of one
    framing differ in the count word only."""
    for k in range(len(COUNT_STATEMENTS)):
        said = [stated_count(n, k) for n in range(1, MAX_COUNT + 1)]
        assert all(mentions(t, SHAPES, list(COLORS)) == [] for t in said)
        for n, t in enumerate(said, 1):
            w = words(t)
            assert COUNT_WORDS[n - 1] in w and not set(COUNT_WORDS[:MAX_COUNT]) - {COUNT_WORDS[n - 1]} & set(w)
        assert len({t.replace(COUNT_WORDS[n - 1], "#").replace("shapes", "shape") for n, t in enumerate(said, 1)}) == 1
    assert not any(s.startswith("a picture of") for s in COUNT_STATEMENTS)  # not the zero-shot test's prompt


def test_count_scenes_and_texts():
    scenes = [draw_scene(np.random.default_rng(i), SIDE, 1 + i % 3)[1] for i in range(30)]
    got = count_scenes(scenes, SIDE, seed=0)
    for objs, c in zip(scenes, got, strict=True):
        assert c.objects == list(objs) and (c.fewer is None) == (len(objs) == 1)
        assert len(objs) < MAX_COUNT or c.more is None
        assert [len(v) for v in c.variants()][0] == len(objs)
        assert all(abs(len(v) - len(objs)) == 1 for v in c.variants()[1:])
    assert sum(c.more is not None for c in got) > 15 and count_scenes(scenes, SIDE, 0) == got  # seeded
    rng = np.random.default_rng(0)
    for objs in scenes[:6]:
        caption, said = count_texts(list(objs), SIDE, rng)
        assert sorted(m.shape for m in mentions(caption, SHAPES, list(COLORS))) == sorted(o.shape for o in objs)
        assert len(said) == MAX_COUNT and COUNT_WORDS[len(objs) - 1] in words(said[0])
        assert sorted(COUNT_WORDS.index(next(w for w in words(t) if w in COUNT_WORDS)) + 1 for t in said) == [1, 2, 3]


class _HandMadeClip(torch.nn.Module):
    """An image tower that passes hand-made embeddings through (normalised), at logit scale exp(0) = 1."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))

    def encode_image(self, x, normalize=True):
        return torch.nn.functional.normalize(x.flatten(1), dim=-1)


def test_count_losses_on_hand_made_embeddings(monkeypatch):
    """Two images, each on its own caption (the other orthogonal) and on its true count statement (the two
    false ones orthogonal): the losses worked out by hand."""
    import hw3lib.pretraining.count_tuning as ct

    e = torch.eye(4)
    table = {"a": e[0], "b": e[1], "one": e[0], "two": e[2], "three": e[3], "uno": e[1], "dos": e[2], "tres": e[3]}
    monkeypatch.setattr(ct, "encode_text_trimmed", lambda model, texts: torch.stack([table[t] for t in texts]))
    clip = _HandMadeClip()
    images = torch.stack([e[0], e[1]])  # (2, 4)
    l_clip, l_count = count_losses(clip, lambda texts: texts, images, ["a", "b"],
                                   [["one", "two", "three"], ["uno", "dos", "tres"]])
    # image-text cosines: own caption 1, the other 0, both ways: log(1 + e^-1) each
    assert l_clip.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # each image: its true statement at cosine 1, two false ones at 0
    assert l_count.item() == pytest.approx(math.log(1 + 2 * math.exp(-1)))


def test_count_statements_are_encoded_once_each(monkeypatch):
    """The statements a batch shares are encoded once and gathered back to every render in its order: the
    loss is that of encoding each render's list in full."""
    import hw3lib.pretraining.count_tuning as ct

    e = torch.eye(4)
    table = {"a": e[0], "b": e[1], "one": e[0], "two": e[1], "three": e[3]}
    seen = []

    def encode(model, texts):
        seen.append(list(texts))
        return torch.stack([table[t] for t in texts])

    monkeypatch.setattr(ct, "encode_text_trimmed", encode)
    images = torch.stack([e[0], e[1]])
    _, l_count = count_losses(_HandMadeClip(), lambda texts: texts, images, ["a", "b"],
                              [["one", "two", "three"], ["two", "one", "three"]])
    assert sorted(seen[1]) == ["one", "three", "two"]  # three statements for six slots
    # each image: its true statement at cosine 1, the others at 0 and 0
    assert l_count.item() == pytest.approx(math.log(1 + 2 * math.exp(-1)))
