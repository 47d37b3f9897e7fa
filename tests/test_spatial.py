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


def _scenes(n, seed):
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        objs = []
        for shape in ("circle", "star"):
            x, y = (int(v) * 12 for v in rng.integers(0, 7, size=2))
            objs.append(Obj(shape, "red", "small", (x, y, x + 24, y + 24)))
        scenes.append(objs)
    return scenes


def _tokens(scenes, where: bool, seed: int):
    """(N, 1 + 64, 20) tokens on the demo's 8 x 8 grid: with `where`, each patch holds its row and column
    one-hot (and noise); without, noise alone."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(len(scenes), 65, 20, generator=g) * 0.1
    if where:
        for i in range(64):
            t[:, 1 + i, i // 8] += 1.0
            t[:, 1 + i, 8 + i % 8] += 1.0
    return t


@pytest.mark.parametrize("where", [True, False])
def test_position_probes_read_position_where_the_tokens_hold_it_and_only_there(where):
    from hw3lib.metrics.probe import position_probes

    fit, test = _scenes(120, 0), _scenes(60, 1)
    rows = {r.task: r for r in position_probes(_tokens(fit, where, 0), fit, _tokens(test, where, 1), test, SIDE)}
    assert set(rows) == {"patch row", "patch column", "object region (3 x 3)", "pair: left of the other"}
    for r in rows.values():
        if where:
            assert r.accuracy >= 0.95, r
        else:  # nothing to read: no better than the most frequent class, give or take the noise
            assert r.accuracy <= r.chance + 0.12, r
    assert rows["pair: left of the other"].items == sum(1 for s in test if s[0].center[0] != s[1].center[0]) * 2


# -- the patch position given to the cross-attention ---------------------------------------------------------


def test_the_position_code_says_where_each_patch_lies_and_nothing_for_the_prefix():
    import torch

    from hw3lib.core.patches import PatchGrid

    code = PatchGrid(2, 3, 1).position_code(8)  # (1 + 6, 8)
    assert code.shape == (7, 8) and torch.equal(code[0], torch.zeros(8))
    rows, cols = code[1:, :4], code[1:, 4:]  # row-major patches: (0,0) (0,1) (0,2) (1,0) ...
    assert torch.equal(rows[0], rows[2]) and not torch.equal(rows[0], rows[3])  # the row half: the row alone
    assert torch.equal(cols[0], cols[3]) and not torch.equal(cols[0], cols[1])  # the column half: the column
    assert len({tuple(r.tolist()) for r in code[1:]}) == 6  # every patch its own code
    with pytest.raises(ValueError, match="divisible by 4"):
        PatchGrid(2, 2, 1).position_code(6)


def test_patch_position_off_is_todays_cross_attention_and_on_adds_the_code():
    import torch

    from hw3lib.core.patches import PatchGrid

    from .tiny import encoder_tokens, perturbed, tiny_captioner

    feats = encoder_tokens(B=2, S=10)  # 1 + 3 x 3
    off = tiny_captioner("lora")
    on = tiny_captioner("lora", patch_position="sincos")
    on.load_state_dict(off.state_dict())  # the same weights: nothing is added to the state
    assert off.state_dict().keys() == on.state_dict().keys()
    with torch.no_grad():
        memory = off.proj(feats)
        for (k, v), (k2, v2) in zip(off.cross_kv(feats), off.decoder.cross_kv(memory), strict=True):
            assert torch.equal(k, k2) and torch.equal(v, v2)  # off: bit-identical to the plain path
        code = PatchGrid.of_tokens(10).position_code(memory.shape[-1])
        for (k, v), (k2, v2) in zip(on.cross_kv(feats), off.decoder.cross_kv(memory + code), strict=True):
            assert torch.equal(k, k2) and torch.equal(v, v2)
    perturbed(off)
    on.load_state_dict(off.state_dict())
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():  # trained (non-zero) cross-attention: the words now receive the position too
        assert not torch.allclose(on.eval()(feats[:1], ids), off(feats[:1], ids))
