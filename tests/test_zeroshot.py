"""P1: the classifier builder against open_clip's, metrics and intervals, the CLI, the notebook."""

import json

import numpy as np
import pytest
import torch
from open_clip import build_zero_shot_classifier

from hw3lib.core.manifest import ClipSpec, load_manifest
from hw3lib.models.clip import encode_text_trimmed
from hw3lib.models.loading import load_clip
from hw3lib.zeroshot.classify import (
    ZeroShotStudy,
    accuracy,
    build_classifier,
    confusion_matrix,
    ensemble,
    greedy_selection,
    per_class_accuracy,
    per_template_accuracy,
    prompt_study,
    top_probabilities,
    topk_accuracy,
)
from hw3lib.zeroshot.templates import REPORT, fill, template_set

from .conftest import run_cli

NAMES = ["circle", "square", "triangle", "star", "hexagon"]

OPENAI7 = template_set("openai7")  # the CLIP authors' 7 templates (open_clip's list)


@pytest.fixture(scope="module")
def random_clip(small_models):
    """The demo CLIP architecture with fresh random weights (no checkpoint)."""
    m = load_manifest(small_models)
    torch.manual_seed(0)
    return load_clip(ClipSpec(m.clip.model, None, m.clip.config))


@pytest.fixture(scope="module")
def study(small_models, small_world):
    clip = load_clip(load_manifest(small_models).clip)
    p1 = small_world / "p1_data"
    return ZeroShotStudy.from_folder(clip, p1 / "val", p1 / "id2label.json")


def test_classifier_equals_open_clip(random_clip):
    templates = list(REPORT) + list(OPENAI7)
    ours = build_classifier(random_clip, NAMES, templates)
    ref = build_zero_shot_classifier(random_clip.model, random_clip.tokenizer, NAMES,
                                     [lambda c, t=t: fill(t, c) for t in templates], num_classes_per_batch=2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_trimmed_text_encoding_is_exact(random_clip):
    tokens = random_clip.tokenizer(["a", "a photo of a large purple hexagon in a video game", "x y z"])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(random_clip.model, tokens),
                                   random_clip.model.encode_text(tokens, normalize=True), atol=1e-5, rtol=1e-5)


def test_openai80_is_80_templates():
    t = template_set("openai80")
    assert len(t) == 80 and all("{object}" in x for x in t) and "a bad photo of a {object}." in t


def test_images_are_encoded_once_per_study(small_models, small_world, monkeypatch):
    clip = load_clip(load_manifest(small_models).clip)
    calls = {"n": 0}
    orig = clip.model.encode_image

    def counting(x, normalize=False):
        calls["n"] += x.shape[0]
        return orig(x, normalize=normalize)

    monkeypatch.setattr(clip.model, "encode_image", counting)
    p1 = small_world / "p1_data"
    st = ZeroShotStudy.from_folder(clip, p1 / "val", p1 / "id2label.json")
    prompt_study(st, list(REPORT), {"openai7": list(template_set("openai7"))}, n_boot=50)
    assert calls["n"] == len(st.paths)


def test_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    assert accuracy(pred, labels) == pytest.approx(4 / 6)
    cm = confusion_matrix(pred, labels, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert per_class_accuracy(pred, labels, 3).tolist() == [0.5, 1.0, 0.5]
    logits = torch.tensor([[3., 2, 1], [1, 3, 2], [1, 3, 2], [2, 3, 1], [3, 1, 2], [1, 2, 3]])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(4 / 6)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(5 / 6)  # row 1: label 0 ranks last
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_per_template_and_selection(study):
    feats = study.text_features(list(OPENAI7))
    singles = per_template_accuracy(study, feats)
    for i, t in enumerate(OPENAI7):  # batched per-template accuracy equals one-at-a-time
        pred = study.predict(study.text_features([t])[0])
        assert singles[i] == pytest.approx(accuracy(pred, study.labels))
    idx = np.arange(len(study.labels))
    chosen = greedy_selection(study, feats, idx)
    from hw3lib.zeroshot.classify import ensemble

    acc_chosen = accuracy(study.predict(ensemble(feats, chosen)), study.labels)
    assert len(chosen) >= 1 and acc_chosen >= singles.max() - 1e-9


def test_top_probabilities(study):
    from hw3lib.zeroshot.classify import ensemble

    top = top_probabilities(study, ensemble(study.text_features(["a {object}"])), [0, 3], k=5)
    assert len(top) == 2 and all(len(t) == 5 for t in top)
    probs = [p for _, p in top[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_cli_writes_csv_and_reports_accuracy(small_models, small_world, tmp_path):
    p1 = small_world / "p1_data"
    out = tmp_path / "pred.csv"
    r = run_cli("zeroshot", p1 / "val", p1 / "id2label.json", out, "--assets", small_models,
                "--templates", "report", "--template", "a {object}", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    files = sorted(p.name for p in (p1 / "val").iterdir())
    assert lines[0] == "filename,label" and sorted(line.split(",")[0] for line in lines[1:]) == files
    assert all(0 <= int(line.split(",")[1]) < 10 for line in lines[1:])
    assert "accuracy" in r.stdout and "4 template(s)" in r.stdout


def test_cli_bad_inputs(small_models, small_world, tmp_path):
    p1 = small_world / "p1_data"
    out = tmp_path / "pred.csv"
    out.write_text("previous\n")
    cases = []
    r = run_cli("zeroshot", p1 / "val", p1 / "id2label.json", out, "--assets", small_models, "--templates", "nope")
    cases.append((r, "unknown template set"))
    (tmp_path / "empty").mkdir()
    r = run_cli("zeroshot", tmp_path / "empty", p1 / "id2label.json", out, "--assets", small_models)
    cases.append((r, "no images"))
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "circle", "1": "square"}))
    r = run_cli("zeroshot", p1 / "val", tmp_path / "id2label.json", out, "--assets", small_models)
    cases.append((r, "is not in"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in list((p1 / "val").iterdir())[:3]:
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "0_999.png").write_bytes(b"not a png at all")
    r = run_cli("zeroshot", bad, p1 / "id2label.json", out, "--assets", small_models)
    cases.append((r, "0_999.png: not an image file"))
    for r, msg in cases:
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (msg, r.stderr)
    assert out.read_text() == "previous\n"  # a failed run never touches the output
    r = run_cli("zeroshot", bad, p1 / "id2label.json", out, "--assets", small_models, "--skip-bad")
    assert r.returncode == 0 and "skipped 1 bad image" in r.stderr
    assert len(out.read_text().splitlines()) == 4


def test_style_study_equals_a_direct_count(study, small_world):
    """Every number of the style study recomputed from per-template predictions, by style."""
    from hw3lib.demo.styles import STYLES
    from hw3lib.demo.world import DemoWorld
    from hw3lib.zeroshot.styles import BARE, StylePrompts, style_prompt, style_study
    from hw3lib.zeroshot.templates import PHOTO, REPORT

    world = DemoWorld.load(small_world)
    image_styles = [world.p1_styles[p.name] for p in study.paths]
    templates = ["a photo of a {object}.", "a sketch of the {object}."]
    st = style_study(study, image_styles, StylePrompts(list(REPORT), PHOTO[0], templates), n_boot=50)
    prompts = [style_prompt(s) for s in STYLES]
    assert st.prompts == prompts and st.prompt_styles == list(STYLES)
    ok = study.predict_each(study.text_features(prompts)) == study.labels[None]  # (6, N)
    styles = np.array(image_styles)
    assert [r.style for r in st.rows] == [s for s in STYLES if (styles == s).any()]
    for r in st.rows:
        m = styles == r.style
        assert r.images == m.sum()
        assert r.accuracy == pytest.approx(ok[:, m].mean(1).tolist())
        if r.style == "photo":
            assert r.matched_vs_photo is None
        else:
            j = STYLES.index(r.style)
            assert r.matched_vs_photo.difference == pytest.approx(ok[j, m].mean() - ok[0, m].mean())
    own = np.array([STYLES.index(s) for s in image_styles])
    matched = ok[own, np.arange(len(own))]
    others = (ok.sum(0) - matched) / (len(STYLES) - 1)
    assert st.matched_vs_mismatched.difference == pytest.approx(matched.mean() - others.mean())
    assert [(t.a, t.b) for t in st.report_pairs] == [(REPORT[0], REPORT[1]), (REPORT[0], REPORT[2]), (REPORT[1], REPORT[2])]
    bare = study.predict_each(study.text_features([BARE, PHOTO[0]])) == study.labels[None]
    assert st.bare_vs_photo.test.accuracy_a == pytest.approx(bare[0].mean())
    assert st.bare_vs_photo.test.accuracy_b == pytest.approx(bare[1].mean())
    ens = study.predict(ensemble(study.text_features(templates))) == study.labels
    assert st.ensemble_vs_photo.test.accuracy_b == pytest.approx(ens.mean())
    assert st.word_styles == {} and type(st).from_json(st.to_json()) == st
    with pytest.raises(ValueError, match="styles for"):
        style_study(study, image_styles[:-1], StylePrompts(list(REPORT), PHOTO[0], templates))
