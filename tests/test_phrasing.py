"""The caption grammar (hw3lib/demo/phrasing.py) against everything that reads it: over generated scenes
of every size, in both caption orders, every reference caption parses to exactly its image's objects,
every checkable relation it states is true, grounding counts every mention right, and P3 finds a box for
every object noun through the demo's own tokenizer and GPT-2's."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hw3lib.attention.maps import CaptionAttention, _noun_boxes
from hw3lib.core.tokenizer import load_gpt2_tokenizer, train_bpe
from hw3lib.demo import phrasing
from hw3lib.demo.world import CAPTION_ORDERS, COLORS, SHAPES, Obj, draw_scene, make_captions
from hw3lib.metrics.grounding import ground_caption
from hw3lib.metrics.objects import score_caption
from hw3lib.metrics.relations import check

SIDE = 96
GPT2 = Path(__file__).parent / "data" / "gpt2"


def scenes(n: int = 120, seed: int = 7):
    """(objects, every phrasing of the scene) for `n` scenes of one to three objects, both orders."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        _, objs = draw_scene(rng, SIDE, 1 + i % 3)
        for order in CAPTION_ORDERS:
            out.append((objs, make_captions(np.random.default_rng(i), objs, SIDE, 7, order)))
    return out


SCENES = scenes()


def test_every_reference_names_exactly_its_objects():
    for objs, caps in SCENES:
        for cap in caps:
            s = score_caption(phrasing.mentions(cap, SHAPES, COLORS), objs)
            assert s.exact, (cap, objs)


def test_every_checkable_relation_is_true_and_most_are_checkable():
    stated = checkable = 0
    for objs, caps in SCENES:
        for cap in caps:
            for rel in phrasing.stated_relations(cap, SHAPES, COLORS):
                stated += 1
                verdict = check(rel, objs)
                if verdict is not None:
                    checkable += 1
                    assert verdict, (cap, rel, objs)
    assert stated > 100 and checkable > 0.8 * stated


def test_grounding_counts_every_mention_right():
    for objs, caps in SCENES:
        for cap in caps:
            g = ground_caption(cap, objs, list(SHAPES), list(COLORS))
            assert g.right["mentions"] == g.total["mentions"] == len(objs), cap


@pytest.fixture(scope="module")
def tokenizers():
    demo = train_bpe([c for _, caps in SCENES for c in caps], 512)  # the demo's own kind of tokenizer
    return {"demo BPE": demo, "GPT-2": load_gpt2_tokenizer(GPT2 / "encoder.json", GPT2 / "vocab.bpe")}


@pytest.mark.parametrize("name", ["demo BPE", "GPT-2"])
def test_p3_finds_a_box_for_every_object_noun(tokenizers, name):
    """GPT-2 splits "hexagon" into pieces; the noun's token is the piece that ends it."""
    tok = tokenizers[name]
    for objs, caps in SCENES:
        for cap in caps:
            ids = tok.encode(cap)
            texts = [tok.id_to_token_text(i) for i in ids]
            ca = CaptionAttention(Path("x.png"), cap, ids, texts, torch.zeros(0), torch.zeros(0), torch.zeros(0),
                                  (1, 1), 1, 0)
            nouns = _noun_boxes(ca, objs, list(SHAPES), list(COLORS))
            assert sorted(shape for _, shape, _ in nouns) == sorted(o.shape for o in objs), (name, cap)
            for t, shape, boxes in nouns:
                assert texts[t].strip() and shape.endswith(texts[t].strip()), (name, cap, texts[t])
                assert boxes and all(b in [o.box for o in objs if o.shape == shape] for b in boxes)


def test_token_mentions_on_split_words():
    """Hand-made pieces: the index is the piece that ends the shape word; words glued across pieces
    are read whole."""
    pieces = ["a", " small", " hex", "agon", " colou", "red", " red", " and", " a", " blue", " st", "ar"]
    assert phrasing.token_mentions(pieces, SHAPES, COLORS) == [
        (3, phrasing.Mention("hexagon", "red")), (11, phrasing.Mention("star", "blue"))]


def test_relations_read_back_what_was_written():
    """`side_of` writes the relation a caption states; `holds` checks it: they agree both ways."""
    a, b = Obj("circle", "red", "small", (0, 0, 10, 10)), Obj("star", "blue", "small", (40, 5, 50, 15))
    assert phrasing.side_of(a, b) == "left" and phrasing.side_of(b, a) == "right"
    assert phrasing.holds("left", a, b) and not phrasing.holds("right", a, b)
    cap = phrasing.caption_pool([a, b], SIDE, reading=True)[1]  # "... with a ... star to the right of it"
    (rel,) = phrasing.stated_relations(cap, SHAPES, COLORS)
    assert (rel.subject.shape, rel.relation, rel.object.shape) == ("star", "right", "circle")


def test_the_world_records_its_grammar(tmp_path):
    from hw3lib.core.files import read_json
    from hw3lib.demo.world import write_demo_world

    root = write_demo_world(tmp_path / "w", seed=0, size="small", progress=False)
    assert read_json(root / "DEMO.json")["grammar"] == phrasing.GRAMMAR
    assert len(phrasing.GRAMMAR) == 16 and int(phrasing.GRAMMAR, 16) >= 0
    # a world another grammar wrote is named, not read with this one
    import json

    from hw3lib.core.errors import HW3Error
    from hw3lib.demo.world import DemoWorld

    doc = read_json(root / "DEMO.json") | {"grammar": "0" * 16}
    (root / "DEMO.json").write_text(json.dumps(doc))
    with pytest.raises(HW3Error, match=r"DEMO.json: its captions were written by another caption grammar"):
        DemoWorld.load(root)
