"""Flip augmentation that keeps captions true (#47): the image mirrored, its caption's left/right words
swapped (VirTex, MDETR), its boxes mirrored; and with the flip off, the data and order of today."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image

from .conftest import ROOT


def test_every_side_word_is_swapped_and_nothing_else():
    from hw3lib.training.mirror import parse_swaps, swap_words

    pairs = parse_swaps(["left:right"])
    caption = "A red circle to the left of a blue star in the top left; Right of it, a LEFT arrow."
    assert swap_words(caption, pairs) == ("A red circle to the right of a blue star in the top right; Left of it, "
                                          "a RIGHT arrow.")
    untouched = "a bright leftover star, upright, in the centre"  # side words only as whole words
    assert swap_words(untouched, pairs) == untouched
    assert swap_words(swap_words(caption, pairs), pairs) == caption  # a flip twice is no flip
    two = parse_swaps(["left:right", "east:west"])
    assert swap_words("west of the left one", two) == "east of the right one"


@pytest.mark.parametrize("items, needle", [(["left"], "not a pair of words"), (["left:left"], "'left' twice"),
                                           (["left:right", "right:east"], "'right' twice"),
                                           (["left:ri ght"], "not a pair")])
def test_bad_swap_lists_are_refused(items, needle):
    from hw3lib.core.errors import HW3Error
    from hw3lib.training.config import load_config

    with pytest.raises(HW3Error, match=needle):
        load_config(None, {"hflip": "0.5", "flip_swaps": ",".join(items)})


def test_a_mirrored_box_is_the_same_box_seen_from_the_other_side():
    from hw3lib.training.mirror import mirror_box

    assert mirror_box((10, 5, 30, 25), 96) == (66, 5, 86, 25)
    assert mirror_box((0, 0, 96, 12), 96) == (0, 0, 96, 12)
    assert mirror_box(mirror_box((3, 4, 50, 60), 96), 96) == (3, 4, 50, 60)


def test_flip_and_swap_keeps_every_reference_relation_and_region_true(small_world):
    """Every relation and region of the world's references is true of the image; after the flip and swap it
    still is, while the flip alone (today's hflip: the caption as it was) turns every left/right one false."""
    from hw3lib.demo.phrasing import holds, region, stated_relations
    from hw3lib.demo.world import DemoWorld, read_boxes
    from hw3lib.metrics.relations import check
    from hw3lib.training.mirror import mirror_box, parse_swaps, swap_words

    world = DemoWorld.load(small_world)
    boxes = read_boxes(small_world / "p2_data" / "boxes.json")
    captions = json.loads((small_world / "p2_data" / "train.json").read_text())
    names = {im["id"]: im["file_name"] for im in captions["images"]}
    pairs, side = parse_swaps(["left:right"]), 96
    kept = broken = sideways = 0
    for ann in captions["annotations"]:
        objs = boxes[f"train/{names[ann['image_id']]}"]
        flipped = tuple(replace(o, box=mirror_box(o.box, side)) for o in objs)
        for rel in stated_relations(ann["caption"], world.shapes, world.colors):
            if check(rel, objs) is None:
                continue
            assert check(rel, objs) is True  # the reference is true of its image
            sideways += rel.relation in ("left", "right")
            broken += check(rel, flipped) is False  # flipped image, caption unchanged
        for rel in stated_relations(swap_words(ann["caption"], pairs), world.shapes, world.colors):
            if check(rel, flipped) is not None:
                kept += 1
                assert check(rel, flipped) is True
    assert sideways > 20 and broken == sideways and kept >= sideways
    for objs in boxes.values():
        for o in objs:
            m = replace(o, box=mirror_box(o.box, side))
            assert region(m, side) == swap_words(region(o, side), pairs)
            for other in objs:
                if other is not o and holds("left", o, other):
                    assert holds("right", m, replace(other, box=mirror_box(other.box, side)))


def test_caption_data_with_a_mirror_appends_swapped_twins(small_world):
    from hw3lib.core.data import read_caption_file
    from hw3lib.core.tokenizer import load_gpt2_tokenizer
    from hw3lib.demo.world import DemoWorld
    from hw3lib.training.loop import Objects, caption_data
    from hw3lib.training.mirror import mirror_box, swap_words

    world = DemoWorld.load(small_world)
    p2 = small_world / "p2_data"
    cs = read_caption_file(p2 / "train.json", p2 / "images" / "train")
    tok = load_gpt2_tokenizer(ROOT / "tests" / "data" / "gpt2" / "encoder.json", ROOT / "tests" / "data" / "gpt2" / "vocab.bpe")
    objects = Objects(world.objects("p2_data"), world.shapes, world.colors, "train")
    plain = caption_data(cs, tok, 60, objects)
    twin = caption_data(cs, tok, 60, objects, (("left", "right"),))
    n, m = len(plain.pairs), len(plain.paths)
    assert twin.mirrored_from == n and twin.originals == n and plain.originals == n and plain.mirrored_from == 0
    assert twin.pairs[:n] == plain.pairs and twin.paths == plain.paths * 2
    assert [twin.mirrored(i) for i in (0, m - 1, m, 2 * m - 1)] == [False, False, True, True]
    for (i, toks), (j, twin_toks) in zip(plain.pairs, twin.pairs[n:], strict=True):
        assert j == i + m
        assert tok.decode(twin_toks) == swap_words(tok.decode(toks), (("left", "right"),))
    g = twin.grounding
    assert [o.box for o in g.objects[m]] == [mirror_box(o.box, 96) for o in g.objects[0]]
    assert g.targets[:n] == plain.grounding.targets and len(g.targets) == 2 * n


def test_the_epoch_order_is_todays_without_flips_and_the_same_permutation_with_them():
    from types import SimpleNamespace

    from hw3lib.training.loop import Plan, Trainer

    def order(hflip, mirrored_from):
        t = SimpleNamespace(cfg=SimpleNamespace(seed=3, hflip=hflip, batch_size=4),
                            plan=Plan(micro_per_epoch=10, steps_per_epoch=10, total=10, val_every=10),
                            state={"epoch": 1}, world=1, rank=0,
                            train=SimpleNamespace(originals=40, mirrored_from=mirrored_from))
        return Trainer.epoch_order(t)

    g = torch.Generator().manual_seed(3 * 100_003 + 1)
    assert torch.equal(order(0.0, 0), torch.randperm(40, generator=g).view(10, 1, 4)[:, 0])  # as before
    flipped = order(0.5, 40)
    assert torch.equal(flipped % 40, order(0.0, 0)) and 8 < int((flipped >= 40).sum()) < 32


def test_a_mirrored_index_reads_the_image_flipped(tmp_path):
    import torchvision.transforms as T

    from hw3lib.training.feature_cache import FeatureSource

    p = tmp_path / "a.png"
    Image.effect_noise((12, 8), 50).convert("RGB").save(p)
    model = SimpleModel()
    src = FeatureSource(model, [p, p], T.ToTensor(), None, "cpu", [False, True])
    a, b = src([0, 1])
    assert torch.equal(b, a.flip(-1)) and not torch.equal(a, b)


class SimpleModel:
    def encode(self, x):  # the pixels themselves: what the encoder was given
        return x


@pytest.mark.slow
def test_train_with_hflip_runs_and_gives_the_same_bytes_twice(small_models, small_world, tmp_path):
    settings = ["--max_steps=6", "--select_images=4", "--lora_r=4", "--device=cpu", "--val_every=3",
                "--attention_supervision=0.5", "--hflip=0.5"]
    for out in ("a", "b"):
        subprocess.run([sys.executable, "-m", "hw3lib", "train", str(ROOT / "configs" / "demo" / "lora16.toml"),
                        "--assets", str(small_models), "--data", str(small_world / "p2_data"), "--out",
                        str(tmp_path / out), *settings], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONHASHSEED="random"))
    a, b = ((tmp_path / x / "checkpoint-last.safetensors").read_bytes() for x in ("a", "b"))
    assert a == b
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert cfg["hflip"] == 0.5 and cfg["flip_swaps"] == ["left:right"]
