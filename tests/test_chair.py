"""CHAIR (hw3lib/chair.py) on hand-written captions whose answers are counted by hand."""

import json

import pytest

from hw3lib.core.errors import HW3Error
from hw3lib.metrics.chair import SYNONYMS, categories_in, chair, instance_categories


def test_the_80_categories():
    assert len(SYNONYMS) == 80 and "hot dog" in SYNONYMS and "teddy bear" in SYNONYMS


@pytest.mark.parametrize(("text", "expected"), [
    ("A man riding a horse on a beach", ["person", "horse"]),
    ("two women and three dogs", ["person", "dog"]),
    ("a hot dog next to a teddy bear and a bear", ["hot dog", "teddy bear", "bear"]),
    ("children with knives and mice", ["person", "knife", "mouse"]),
    ("a couple of buses near the benches", ["bus", "bench"]),
    ("a plate of broccoli", ["broccoli"]),
    ("an empty street", []),
    ("a cell phone and a phone", ["cell phone", "cell phone"]),
])
def test_categories_in_text(text, expected):
    assert categories_in(text) == expected


def test_chair_by_hand():
    refs = {"a": ["A man rides a horse.", "A person on a horse near a fence."],
            "b": ["A cat sleeps on a couch."],
            "c": ["A plate with a sandwich and a cup."]}
    preds = {"a": "a man riding a horse with a dog",  # person, horse right; dog hallucinated
             "b": "a cat on a sofa",  # both right (sofa = couch)
             "c": "a sandwich"}  # right; cup omitted
    c = chair(preds, refs)
    assert c.per_image["a"].hallucinated == ("dog",)
    assert c.chair_i == pytest.approx(1 / 6)  # mentioned: 3 + 2 + 1
    assert c.chair_s == pytest.approx(1 / 3)
    assert c.recall == pytest.approx(5 / 6)  # truth: {person, horse} + {cat, couch} + {sandwich, cup}
    # annotated objects count as ground truth too: the dog is in the instances file
    c2 = chair(preds, refs, {"a": {"dog"}})
    assert c2.chair_s == 0.0 and c2.recall == pytest.approx(6 / 7)
    assert json.loads(json.dumps(c.to_json()))["CHAIR_s"] == pytest.approx(1 / 3)


def test_instances_file(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "000001.jpg"}], "categories": [{"id": 18, "name": "dog"}],
           "annotations": [{"image_id": 1, "category_id": 18}]}
    (tmp_path / "inst.json").write_text(json.dumps(doc))
    assert instance_categories(tmp_path / "inst.json") == {"000001": {"dog"}}
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(HW3Error, match="not a COCO instances file"):
        instance_categories(tmp_path / "bad.json")
    doc["categories"] = [{"id": 18, "name": "dragon"}]
    (tmp_path / "odd.json").write_text(json.dumps(doc))
    with pytest.raises(HW3Error, match="outside COCO's 80"):
        instance_categories(tmp_path / "odd.json")


def test_evaluate_cli_reports_chair_with_instances(tmp_path):
    from PIL import Image

    from .conftest import run_cli

    images = tmp_path / "images"
    images.mkdir()
    for name in ("000001.jpg", "000002.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    ann = {"images": [{"id": 1, "file_name": "000001.jpg"}, {"id": 2, "file_name": "000002.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "caption": "A man riding a horse."},
                           {"id": 2, "image_id": 2, "caption": "A cat on a sofa."}]}
    inst = {"images": ann["images"], "categories": [{"id": 18, "name": "dog"}],
            "annotations": [{"image_id": 1, "category_id": 18}]}
    (tmp_path / "val.json").write_text(json.dumps(ann))
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    (tmp_path / "pred.json").write_text(json.dumps({"000001": "a man and a dog on a horse", "000002": "a dog"}))
    r = run_cli("evaluate", tmp_path / "pred.json", "--images", images, "--annotations", tmp_path / "val.json",
                "--no-clip", "--tokenizer", "python", "--instances", tmp_path / "inst.json",
                "--per-image", tmp_path / "scores.json")
    assert r.returncode == 0, r.stderr
    # image 1: person, horse, dog all true (the dog from the instances file); image 2: the dog hallucinated, the
    # cat and the sofa (couch) omitted: CHAIR-i 1/4, CHAIR-s 1/2, recall 3/5
    assert "CHAIR-i: 0.2500  CHAIR-s: 0.5000  object recall: 0.6000" in r.stdout
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["per_image"]["000002"]["CHAIR"]["hallucinated"] == ["dog"]
    assert scores["CHAIR"]["CHAIR_s"] == 0.5
    bad = run_cli("evaluate", tmp_path / "pred.json", "--images", images, "--annotations", tmp_path / "val.json",
                  "--no-clip", "--tokenizer", "python", "--instances", tmp_path / "val.json")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a COCO instances file" in bad.stderr
