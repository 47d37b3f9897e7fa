import hashlib
import json
from pathlib import Path

import pytest

from hw3lib.core.data import read_caption_file, read_p1_folder
from hw3lib.core.errors import HW3Error
from hw3lib.core.images import open_image
from hw3lib.demo.styles import STYLE_FRAMINGS
from hw3lib.demo.world import COLORS, GRID, SHAPES, SIZES, WORLD_SIZES, read_boxes, write_demo_world

from .conftest import run_cli


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_twice_gives_byte_identical_trees(tmp_path):
    for name in ("a", "b"):
        r = run_cli("demo-data", tmp_path / name, "--size", "small", "--seed", "7")
        assert r.returncode == 0, r.stderr
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a == b and len(a) > 100


def test_other_seed_differs(small_world, tmp_path):
    other = write_demo_world(tmp_path / "w", seed=8, size="small", progress=False)
    a, b = tree_digest(small_world), tree_digest(other)
    common = a.keys() & b.keys()  # P3 names follow their content; P1/P2 names are fixed
    assert len(common) >= len(a) - 5
    assert sum(a[k] != b[k] for k in common) > len(common) * 0.9


def test_layout_is_the_course_layout_and_readers_accept_it(small_world):
    p1 = read_p1_folder(small_world / "p1_data" / "val", small_world / "p1_data" / "id2label.json")
    assert p1.class_names == SHAPES and len(p1.samples) == WORLD_SIZES["small"].p1_per_class * len(SHAPES)
    boxes = read_boxes(small_world / "p1_data" / "boxes.json")
    for s in p1.samples:  # each image shows its class's shape, in any colour
        (obj,) = boxes[s.path.name]
        assert obj.shape == p1.id2label[s.class_id] and obj.color in COLORS
    assert all(open_image(s.path).size == (96, 96) for s in p1.samples[:5])
    for split, n in (("train", 120), ("val", 24)):
        cs = read_caption_file(small_world / "p2_data" / f"{split}.json", small_world / "p2_data" / "images" / split)
        assert len(cs) == n and len(cs.pairs()) == 5 * n
        names = [im.file_name for im in cs.images]
        assert any(len(Path(f).stem) == 12 and f.startswith("0") for f in names)  # COCO style
        assert any(len(Path(f).stem) == 10 and not f.startswith("0") for f in names)  # Flickr style
    assert len(list((small_world / "p3_data" / "images").glob("*.jpg"))) == 5


def test_boxes_match_images_and_captions_name_every_object(small_world):
    boxes = read_boxes(small_world / "p2_data" / "boxes.json")
    cs = read_caption_file(small_world / "p2_data" / "train.json", small_world / "p2_data" / "images" / "train")
    for im in cs.images:
        objs = boxes[f"train/{im.file_name}"]
        assert 1 <= len(objs) <= 3
        w, h = open_image(im.path).size
        cell = w // GRID
        for o in objs:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert o.shape in SHAPES and o.color in COLORS
            # on the patch grid: the box lies inside the object's grid square, touching its top-left cell
            gx, gy = x0 // cell, y0 // cell
            assert x1 <= (gx + SIZES[o.size]) * cell and y1 <= (gy + SIZES[o.size]) * cell
        for cap in cs.captions[im.id]:
            for o in objs:  # every caption mentions every object's shape
                assert o.shape in cap, (cap, objs)


def test_captions_need_the_image(small_world):
    """The same caption text must not fit most images: colour/shape combinations vary widely."""
    cs = read_caption_file(small_world / "p2_data" / "train.json")
    firsts = [caps[0] for caps in cs.captions.values()]
    assert len(set(firsts)) > 0.9 * len(firsts)
    meta = json.loads((small_world / "DEMO.json").read_text())
    assert meta["seed"] == 7 and meta["size"] == "small"
    assert meta["shapes"] == SHAPES and meta["colors"] == list(COLORS) and meta["p1_classes"] == SHAPES
    assert meta["style_framings"] == STYLE_FRAMINGS  # the framing that goes with each P1 style


def test_p1_colour_gives_chance(small_world):
    """P1's class is the shape alone: colours spread over the classes, so colour cannot name the class."""
    boxes = read_boxes(small_world / "p1_data" / "boxes.json")
    per_color = {}
    for (obj,) in boxes.values():
        per_color.setdefault(obj.color, set()).add(obj.shape)
    assert len(per_color) >= 8 and sum(len(v) > 1 for v in per_color.values()) >= 6


def test_refuses_non_empty_folder_and_unknown_size(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with pytest.raises(HW3Error, match="not empty"):
        write_demo_world(tmp_path / "x", size="small")
    assert (tmp_path / "x" / "f").read_text() == "keep me"
    with pytest.raises(HW3Error, match="unknown demo size"):
        write_demo_world(tmp_path / "y", size="huge")
