"""Readers on the demo world and on every kind of bad input the foundation issue lists."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from hw3lib.core.data import (
    check_prediction_keys,
    read_caption_file,
    read_id2label,
    read_p1_folder,
    read_predictions,
)
from hw3lib.core.errors import HW3Error
from hw3lib.core.files import atomic_write_text, confined_path
from hw3lib.core.images import check_images, open_image

from .conftest import run_cli


@pytest.fixture
def p1(tmp_path, small_world):
    d = tmp_path / "p1"
    shutil.copytree(small_world / "p1_data", d)
    return d


@pytest.fixture
def p2(tmp_path, small_world):
    d = tmp_path / "p2"
    shutil.copytree(small_world / "p2_data", d)
    return d


def _doc(p2):
    return json.loads((p2 / "val.json").read_text())


def _write(p2, doc):
    (p2 / "val.json").write_text(json.dumps(doc))


# ---------------------------------------------------------------- P1


def test_p1_missing_folder(tmp_path, p1):
    with pytest.raises(HW3Error, match="image folder not found"):
        read_p1_folder(tmp_path / "nope", p1 / "id2label.json")


def test_p1_empty_folder(tmp_path, p1):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HW3Error, match="no images"):
        read_p1_folder(tmp_path / "empty", p1 / "id2label.json")


def test_p1_class_id_not_in_id2label(p1):
    Image.new("RGB", (32, 32)).save(p1 / "val" / "99_1.png")
    with pytest.raises(HW3Error, match=r"99_1.png: class id 99 is not in"):
        read_p1_folder(p1 / "val", p1 / "id2label.json")


def test_p1_name_off_pattern(p1):
    Image.new("RGB", (32, 32)).save(p1 / "val" / "cat.png")
    with pytest.raises(HW3Error, match=r"cat.png: file name is not of the form"):
        read_p1_folder(p1 / "val", p1 / "id2label.json")
    ds = read_p1_folder(p1 / "val", p1 / "id2label.json", labelled=False)  # a test folder is fine
    assert any(s.class_id is None for s in ds.samples)


@pytest.mark.parametrize("content, msg", [('{"0": ""}', "has no name"), ('{"a": "cat"}', "not a class id"),
                                          ("[1, 2]", "non-empty JSON object"), ("{bad", "invalid JSON")])
def test_id2label_bad(tmp_path, content, msg):
    (tmp_path / "id2label.json").write_text(content)
    with pytest.raises(HW3Error, match=msg):
        read_id2label(tmp_path / "id2label.json")


# ---------------------------------------------------------------- images


def test_bad_image_files(tmp_path, small_world):
    src = next((small_world / "p2_data" / "images" / "val").glob("*.jpg")).read_bytes()
    cases = {"zero.png": (b"", "empty file"), "trunc.jpg": (src[: len(src) // 3], "corrupt or truncated"),
             "corrupt.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "corrupt|not an image"),
             "text.jpg": (b"hello, I am not an image\n" * 10, "not an image file")}
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(HW3Error, match=msg) as e:
            open_image(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144M pixels in a few kB
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(HW3Error, match="decompression bomb"):
        open_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_modes_convert_to_rgb(tmp_path, mode):
    ext = "tif" if mode == "CMYK" else "png"
    if mode == "I;16":
        im = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
        assert im.mode.startswith("I;16")
    else:
        im = Image.new("RGB", (64, 64), (200, 30, 30)).convert(mode)
    im.save(tmp_path / f"x.{ext}")
    out = open_image(tmp_path / f"x.{ext}")
    assert out.mode == "RGB" and out.size == (64, 64)
    a = np.asarray(out)
    if mode == "I;16":  # the full 16-bit range is rescaled, not clipped
        assert a.min() == 0 and a.max() == 255
    if mode in ("RGBA", "P", "CMYK"):
        assert abs(int(a[0, 0, 0]) - 200) < 12 and a[0, 0, 1] < 60  # P quantises to the web palette


def test_transparent_pixels_composite_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(open_image(tmp_path / "t.png")).min() == 255


def test_skip_bad_warns_and_lists(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"")
    paths = [tmp_path / "good.png", tmp_path / "bad.png"]
    with pytest.raises(HW3Error, match="bad.png: empty file"):
        check_images(paths)
    with pytest.warns(UserWarning, match=r"skipped 1 bad image.*bad.png"):
        kept = check_images(paths, skip_bad=True)
    assert kept == [tmp_path / "good.png"]
    with pytest.raises(HW3Error, match="no readable images left"):
        check_images(paths[1:], skip_bad=True)


# ---------------------------------------------------------------- P2 caption files


def test_p2_reads_demo(p2):
    cs = read_caption_file(p2 / "val.json", p2 / "images" / "val")
    assert len(cs) == 24 and all(len(cs.captions[im.id]) == 5 for im in cs.images)
    assert set(cs.references()) == {im.key for im in cs.images}


def test_coco_captions_file_reads(tmp_path):
    doc = {"info": {"year": 2014}, "licenses": [{"id": 1, "name": "x", "url": ""}],
           "images": [{"license": 3, "file_name": "COCO_val2014_000000391895.jpg", "coco_url": "u",
                       "height": 360, "width": 640, "date_captured": "2013", "flickr_url": "f", "id": 391895}],
           "annotations": [{"image_id": 391895, "id": 770337, "caption": "A man riding a bike. "},
                           {"image_id": 391895, "id": 771687, "caption": "A person on a dirt bike"}],
           "type": "captions"}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(doc))
    cs = read_caption_file(tmp_path / "captions_val2014.json")
    assert cs.images[0].key == "COCO_val2014_000000391895"
    assert cs.captions[391895] == ["A man riding a bike.", "A person on a dirt bike"]


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d.pop("annotations"), "missing key 'annotations'"),
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\] has no 'file_name'"),
    (lambda d: d["annotations"][0].pop("caption"), r"annotations\[0\] has no 'caption'"),
    (lambda d: d["annotations"][0].update(image_id=424242), "not in 'images'"),
    (lambda d: d["images"][1].update(id=d["images"][0]["id"]), "duplicate image id"),
    (lambda d: d["annotations"][0].update(caption="   "), "empty caption"),
    (lambda d: d["annotations"][0].update(caption=7), "must be a string"),
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), "escapes the image folder"),
    (lambda d: d["images"][0].update(file_name="/etc/passwd"), "must be relative"),
    (lambda d: d["images"][0].update(file_name="000000999999.jpg"), "not found in"),
    (lambda d: d["images"][0].update(id="12"), "must be an integer"),
])
def test_p2_bad_json(p2, mutate, msg):
    doc = _doc(p2)
    mutate(doc)
    _write(p2, doc)
    with pytest.raises(HW3Error, match=msg) as e:
        read_caption_file(p2 / "val.json", p2 / "images" / "val")
    assert "val.json" in str(e.value)


def test_symlink_escape_is_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (tmp_path / "imgs" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(HW3Error, match="escapes"):
        confined_path(tmp_path / "imgs", "link.jpg", "x.json")


# ---------------------------------------------------------------- predictions


def test_predictions(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a": "a cat", "b": "a dog"}))
    preds = read_predictions(tmp_path / "p.json")
    check_prediction_keys(preds, ["a", "b"], "p.json")
    with pytest.raises(HW3Error, match=r"1 missing \(c\); 1 extra \(b\)"):
        check_prediction_keys(preds, ["a", "c"], "p.json")
    (tmp_path / "q.json").write_text(json.dumps({"a": 3}))
    with pytest.raises(HW3Error, match="not strings"):
        read_predictions(tmp_path / "q.json")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    atomic_write_text(target, "old\n")
    from hw3lib.core.files import atomic_path

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# ---------------------------------------------------------------- CLI


def test_cli_error_is_one_line_nonzero(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    r = run_cli("demo-data", tmp_path / "x", "--size", "small")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = run_cli("--debug", "demo-data", tmp_path / "x", "--size", "small")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
