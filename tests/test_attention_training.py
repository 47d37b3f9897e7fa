"""The attention terms of training on hand-made maps with known values, the phrase targets on real
GPT-2 tokens, the held-out selection split, the probe on hand-made encoders, and relation checking on
hand-made captions."""

import math

import pytest
import torch

from hw3lib.core.data import CaptionSet, ImageRecord
from hw3lib.core.errors import HW3Error
from hw3lib.core.patches import PatchGrid
from hw3lib.core.tokenizer import load_gpt2_tokenizer
from hw3lib.demo.phrasing import phrases
from hw3lib.demo.world import COLORS, SHAPES, Obj, draw_scene, make_captions, reading_order
from hw3lib.metrics.probe import encoder_probes, patch_labels
from hw3lib.metrics.relations import check, relation_counts, stated_relations
from hw3lib.training import attention_losses as L
from hw3lib.training.attention_targets import assign, batch_targets, caption_targets
from hw3lib.training.selection import selection_split

COLOR_NAMES = list(COLORS)


def rows(*maps):
    """(1, T, S) attention from rows of numbers."""
    return torch.tensor([list(maps)], dtype=torch.float)


# -- the losses, on maps whose values are worked out by hand ------------------------------------


def test_coverage_counts_attention_that_returns():
    att = rows([1, 0], [1, 0], [0, 1])  # looks at token 0 twice, then at token 1
    valid = torch.ones(1, 3, dtype=torch.bool)
    # c_1 = 0 -> 0; c_2 = [1, 0] -> min([1, 0], [1, 0]) = 1; c_3 = [2, 0] -> min([0, 1], [2, 0]) = 0
    assert L.coverage(att, valid).item() == pytest.approx(1 / 3)
    assert L.coverage(rows([1, 0], [0, 1]), torch.ones(1, 2, dtype=torch.bool)).item() == 0.0  # each once: free
    half = rows([0.5, 0.5], [0.5, 0.5])
    assert L.coverage(half, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(0.5)  # (0 + 1) / 2
    # a padded position neither pays nor counts as earlier attention
    assert L.coverage(rows([1, 0], [1, 0]), torch.tensor([[True, False]])).item() == 0.0


def test_doubly_stochastic_wants_every_token_attended_once():
    assert L.doubly_stochastic(rows([1, 0], [0, 1]), torch.ones(1, 2, dtype=torch.bool)).item() == 0.0
    # totals [2, 0]: (1 - 2)^2 + (1 - 0)^2 = 2, over 2 tokens
    assert L.doubly_stochastic(rows([1, 0], [1, 0]), torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(1.0)
    # the padded row is not counted: totals [1, 0] -> 0 + 1, over 1 token
    assert L.doubly_stochastic(rows([1, 0], [1, 0]), torch.tensor([[True, False]])).item() == pytest.approx(1.0)


def test_supervision_is_minus_log_mass_in_the_box():
    att = rows([0.25, 0.75, 0.0], [0.5, 0.2, 0.3])
    where = torch.tensor([[[False, True, False], [True, False, True]]])
    inside = torch.tensor([[True, True]])
    want = -(math.log(0.75) + math.log(0.8)) / 2
    assert L.supervision(att, where, inside).item() == pytest.approx(want, abs=1e-5)
    assert L.supervision(att, where, torch.tensor([[False, True]])).item() == pytest.approx(-math.log(0.8), abs=1e-5)
    zero = L.supervision(att.requires_grad_(), where, torch.zeros(1, 2, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad  # no phrase: nothing to learn, but a graph
    assert L.points_inside(att, where, inside, prefix=0).tolist() == [True, True]
    # behind one prefix token (CLS) the game is played on the patches: row 2's top patch is token 2
    assert L.points_inside(att, where, inside, prefix=1).tolist() == [True, True]
    cls_top = rows([0.6, 0.1, 0.3]), torch.tensor([[[False, False, True]]]), torch.tensor([[True]])
    assert L.points_inside(*cls_top, prefix=1).tolist() == [True]  # CLS's 0.6 is not a place in the image
    assert L.points_inside(*cls_top, prefix=0).tolist() == [False]
    assert L.box_mass(att, where, inside).tolist() == pytest.approx([0.75, 0.8])


def optimise(loss_of, logits, steps=60):
    logits = logits.clone().requires_grad_()
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(logits.softmax(-1)).backward()
        opt.step()
    return logits.detach().softmax(-1)


def test_losses_move_attention_where_they_ask():
    valid = torch.ones(1, 3, dtype=torch.bool)
    where = torch.zeros(1, 3, 4, dtype=torch.bool)
    where[0, :, 2] = True
    att = optimise(lambda a: L.supervision(a, where, valid), torch.zeros(1, 3, 4))
    assert att[0, :, 2].min() > 0.9  # every row moved into the box
    start = torch.tensor([[[4.0, 0, 0, 0], [1.0, 0, 0, 0]]])  # both positions look mostly at token 0
    att = optimise(lambda a: L.coverage(a, torch.ones(1, 2, dtype=torch.bool)), start, steps=200)
    assert att[0, 1, 0] < 0.2 < att[0, 0, 0]  # the second looks elsewhere


def test_mean_map_averages_layers_and_heads():
    a = torch.rand(2, 4, 3, 5).softmax(-1)
    b = torch.rand(2, 4, 3, 5).softmax(-1)
    m = L.mean_map([a, b])
    assert m.shape == (2, 3, 5)
    assert torch.allclose(m, (a.mean(1) + b.mean(1)) / 2)
    assert torch.allclose(m.sum(-1), torch.ones(2, 3))


# -- phrases, objects, tokens and patches -------------------------------------------------------


def obj(shape, color, size, box):
    return Obj(shape, color, size, box)


def test_phrases_and_assignment():
    objs = [obj("circle", "red", "small", (0, 0, 24, 24)), obj("circle", "red", "large", (48, 48, 84, 84)),
            obj("star", "blue", "large", (60, 0, 96, 36))]
    text = "a large red circle, a star coloured blue and a small red circle and a red circle"
    found = phrases(text, SHAPES, COLOR_NAMES)
    assert [text[s:e] for s, e in (p.chars for p in found)] == [
        "large red circle", "star coloured blue", "small red circle", "red circle"]
    assert [(p.color, p.size) for p in found] == [("red", "large"), ("blue", None), ("red", "small"), ("red", None)]
    assert assign(found, objs) == [1, 2, 0, None]  # sizes pick the object; the fourth has none left
    assert assign(phrases("a green circle", SHAPES, COLOR_NAMES), objs) == [None]


def test_caption_targets_on_gpt2_tokens(gpt2_files):
    tok = load_gpt2_tokenizer(*gpt2_files)
    objs = [obj("heart", "pink", "small", (0, 0, 24, 24)), obj("square", "black", "large", (48, 48, 84, 84))]
    text = "a black square to the left of a small pink heart"
    ((ids, offsets),) = tok.encode_with_offsets([text])
    targets = caption_targets(text, offsets, objs, SHAPES, COLOR_NAMES)
    assert [t.obj for t in targets] == [1, 0]
    assert [tok.decode(ids[slice(*t.tokens)]).strip() for t in targets] == ["black square", "small pink heart"]
    cut = caption_targets(text, offsets, objs, SHAPES, COLOR_NAMES, max_tokens=targets[1].tokens[1] - 1)
    assert [t.obj for t in cut] == [1]  # a phrase the cut reaches is left out whole


def test_object_masks_and_patch_grid():
    assert [(g.prefix, g.rows) for g in map(PatchGrid.of_tokens, (65, 197, 64))] == [(1, 8), (1, 14), (0, 8)]
    m = PatchGrid.of_tokens(65).token_masks([(0, 0, 24, 24), (50, 86, 62, 96)], (96, 96))
    assert m.shape == (2, 65)
    assert m[0].nonzero().flatten().tolist() == [1, 2, 9, 10]  # cells (0,0) (0,1) (1,0) (1,1), after CLS
    assert m[1].nonzero().flatten().tolist() == [1 + 7 * 8 + 4]  # x 50..62 holds the centre of col 4 (54), not 5 (66)
    where, inside, first = batch_targets([[type("T", (), {"tokens": (1, 3), "obj": 1})()]], [m], T=4)
    assert inside.tolist() == [[False, True, True, False]] and first.tolist() == [[False, True, False, False]]
    assert torch.equal(where[0, 1], m[1]) and not where[0, 0].any()


def test_reading_order_captions_name_objects_left_to_right():
    import numpy as np

    checked = 0
    for i in range(60):
        r = np.random.default_rng([5, i])
        _, objs = draw_scene(r, 96, 2 + i % 2)
        order = [id(o) for o in reading_order(objs)]
        for cap in make_captions(r, objs, 96, 7, "reading"):
            named = assign(phrases(cap, SHAPES, COLOR_NAMES), objs)
            if None in named or len(set(named)) < len(objs):  # two identical objects: ambiguous
                continue
            assert [id(objs[k]) for k in named] == order, cap
            checked += 1
    assert checked > 300


def test_both_orders_use_the_same_draws():
    import numpy as np

    for i in range(20):
        a, b = np.random.default_rng([3, i]), np.random.default_rng([3, i])
        _, objs = draw_scene(a, 96, 3)
        _, _ = draw_scene(b, 96, 3)
        make_captions(a, objs, 96, 5, "reading")
        make_captions(b, objs, 96, 5, "drawn")
        assert a.integers(1 << 30) == b.integers(1 << 30)
    with pytest.raises(ValueError, match="caption order"):
        make_captions(np.random.default_rng(0), objs, 96, 5, "random")


# -- the selection split ------------------------------------------------------------------------


def caption_set(n):
    from pathlib import Path

    images = [ImageRecord(i, f"{i:06d}.jpg", Path(f"{i:06d}.jpg")) for i in range(n)]
    return CaptionSet(Path("train.json"), images, {i: [f"caption {i}"] for i in range(n)})


def test_selection_split_is_disjoint_stable_and_order_free():
    cs = caption_set(200)
    train, held = selection_split(cs, 20)
    assert len(held) == 20 and len(train) == 180
    assert not {im.key for im in train.images} & {im.key for im in held.images}
    shuffled = caption_set(200)
    shuffled.images.reverse()
    assert {im.key for im in selection_split(shuffled, 20)[1].images} == {im.key for im in held.images}
    keys = sorted(int(im.key) for im in held.images)
    assert keys[-1] - keys[0] > 100  # spread over the file, not its first images
    with pytest.raises(HW3Error, match="select_images=200"):
        selection_split(cs, 200)


# -- the probe ----------------------------------------------------------------------------------


def scenes(n, seed):
    import numpy as np

    out = []
    for i in range(n):
        _, objs = draw_scene(np.random.default_rng([seed, i]), 96, 1 + i % 3)
        out.append(objs)
    return out


def handmade_tokens(objects, informative: bool, seed: int):
    """(N, 65, E) tokens: one-hot colour and shape on each object patch plus noise (informative), or noise."""
    g = torch.Generator().manual_seed(seed)
    E = len(COLOR_NAMES) + len(SHAPES) + 4
    x = torch.randn(len(objects), 65, E, generator=g) * 0.3
    if informative:
        for n, objs in enumerate(objects):
            c = patch_labels(objs, 96, 65, COLOR_NAMES, "color")
            s = patch_labels(objs, 96, 65, SHAPES, "shape")
            for p in range(64):
                if c[p] >= 0:
                    x[n, 1 + p, c[p]] += 3.0
                    x[n, 1 + p, len(COLOR_NAMES) + s[p]] += 3.0
            x[n, 0, -1] += 3.0 * len(objs)  # the CLS token carries the count
    return x


def test_probe_reads_a_handmade_encoder_and_not_noise():
    fit_o, test_o = scenes(150, 1), scenes(60, 2)
    good = encoder_probes(handmade_tokens(fit_o, True, 0), fit_o, handmade_tokens(test_o, True, 1), test_o, 96,
                          SHAPES, COLOR_NAMES)
    acc = {r.task: r.accuracy for r in good}
    assert acc["patch colour"] > 0.98 and acc["patch shape"] > 0.98 and acc["object count (CLS token)"] > 0.98
    blind = encoder_probes(handmade_tokens(fit_o, False, 0), fit_o, handmade_tokens(test_o, False, 1), test_o, 96,
                           SHAPES, COLOR_NAMES)
    for r in blind:
        assert r.accuracy < r.chance + 0.15, r  # noise reads at about chance
        assert 0 < r.chance <= 0.5  # ordered pairs: left of the other exactly half the time


# -- relations ----------------------------------------------------------------------------------


def test_relations_checked_against_boxes():
    red = obj("circle", "red", "small", (0, 36, 24, 60))  # left, middle
    blue = obj("star", "blue", "large", (48, 0, 84, 36))  # right, top
    objs = [red, blue]

    def verdicts(cap):
        return [check(r, objs) for r in stated_relations(cap, SHAPES, COLOR_NAMES)]

    assert verdicts("a red circle to the left of a blue star") == [True]
    assert verdicts("a small red circle to the right of a large blue star") == [False]
    assert verdicts("a blue star above a red circle") == [True]
    assert verdicts("a blue star below a red circle") == [False]
    assert verdicts("a red circle with a blue star to the right of it") == [True]  # it = the red circle
    assert verdicts("a red circle with a blue star to the left of it") == [False]
    assert verdicts("a green circle to the left of a blue star") == [None]  # not in the image: not checkable
    assert verdicts("a red circle and a blue star") == []
    twice = [red, blue, obj("circle", "red", "large", (72, 72, 96, 96))]
    assert [check(r, twice) for r in stated_relations("a red circle above a blue star", SHAPES, COLOR_NAMES)] == [None]
    assert [check(r, twice) for r in stated_relations("a small red circle below a blue star", SHAPES,
                                                       COLOR_NAMES)] == [True]
    counts = relation_counts({"a": "a red circle to the left of a blue star", "b": "a blue star below a red circle",
                              "c": "a purple moon above a blue star"}, {"val/a.jpg": objs, "val/b.jpg": objs,
                                                                       "val/c.jpg": objs}, SHAPES, COLOR_NAMES)
    assert counts.stated.tolist() == [1, 1, 1] and counts.checkable.tolist() == [1, 1, 0]
    assert counts.true.tolist() == [1, 0, 0] and counts.accuracy == 0.5


def test_caption_order_is_checked_and_recorded(tmp_path, small_world):
    from hw3lib.demo.world import DemoWorld, write_demo_world

    with pytest.raises(HW3Error, match="unknown caption order 'random'"):
        write_demo_world(tmp_path / "w", size="small", progress=False, caption_order="random")
    assert not (tmp_path / "w").exists()
    assert DemoWorld.load(small_world).caption_order == "reading"  # the default design
    import json

    record = json.loads((small_world / "DEMO.json").read_text())
    old = tmp_path / "old"
    old.mkdir()
    (old / "DEMO.json").write_text(json.dumps({k: v for k, v in record.items() if k != "caption_order"}))
    assert DemoWorld.load(old).caption_order == "drawn"  # a world written before the option: the first design
    (old / "DEMO.json").write_text(json.dumps(record | {"caption_order": "sideways"}))
    with pytest.raises(HW3Error, match="caption_order"):
        DemoWorld.load(old)
