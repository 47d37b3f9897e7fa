"""`hw3 demo-models`: real training on the demo world, cached, deterministic, in the real formats."""

import json

import torch
from safetensors.torch import load_file

from hw3lib.pretraining.demo_models import build_demo_models

from .conftest import run_cli


def test_outputs_and_metrics(small_models):
    root = small_models.parent
    metrics = json.loads((root / "metrics.json").read_text())
    # the contrastive phases learned something (the few steps of the small style phase on new-looking images
    # then bring it back to chance; the full size's numbers are in the report); the style phase ran
    assert metrics["unstyled_clip_recall_at_1_val"] > metrics["clip_recall_chance"]
    s = metrics["settings"]
    assert len(metrics["clip_loss"]) == s["clip_steps"] + s["clip_style_steps"] > s["clip_steps"]
    assert len(metrics["clip_object_loss"]) == s["clip_object_steps"] + s["clip_steps"] + s["clip_style_steps"]
    assert metrics["decoder_perplexity_val"] < metrics["decoder_vocab_size"] / 4  # it learned something
    assert metrics["gpt_loss"][-1] < metrics["gpt_loss"][0] and metrics["clip_loss"][-1] < metrics["clip_loss"][0]
    for f in ("tokenizer/encoder.json", "tokenizer/vocab.bpe", "clip/open_clip_model.safetensors",
              "clip_unstyled/open_clip_model.safetensors", "clip_negation/open_clip_model.safetensors",
              "assets_unstyled.json", "assets_negation.json", "encoder/clip_visual.safetensors",
              "decoder/decoder_model.bin"):
        assert (root / f).is_file(), f
    visual = load_file(root / "encoder" / "clip_visual.safetensors")
    assert "visual.class_embedding" in visual and all(k.startswith("visual.") for k in visual)


def test_the_count_aware_clip_is_a_second_encoder_beside_the_first(small_models):
    """assets_counting.json: the count-aware CLIP and its own image tower as the encoder, the same decoder and
    tokenizer; the tower is the fine-tuned CLIP's (both towers trained), and it loads as the captioner's."""
    from hw3lib.captioning.runs import load_run, manifest_for
    from hw3lib.demo.models_record import COUNTING_MANIFEST, DemoModels

    root = small_models.parent
    models = DemoModels.load(small_models)
    m, base = manifest_for(models.manifest(COUNTING_MANIFEST)), manifest_for(small_models)
    assert (m.decoder, m.tokenizer) == (base.decoder, base.tokenizer) and m.encoder.checkpoint != base.encoder.checkpoint
    tower = load_file(root / "encoder_counting" / "clip_visual.safetensors")
    clip = load_file(root / "clip_counting" / "open_clip_model.safetensors")
    first = load_file(root / "encoder" / "clip_visual.safetensors")
    assert tower.keys() == first.keys() and all(torch.equal(tower[k], clip[k]) for k in tower)
    assert not all(torch.equal(tower[k], first[k]) for k in tower)  # the fine-tune moved the image tower
    raw = json.loads((root / "metrics.json").read_text())
    assert len(raw["count_loss"]) == raw["settings"]["count_steps"] > 0 and all(len(x) == 2 for x in raw["count_loss"])
    assert models.metrics.counting_clip_recall_at_1_val is not None and "probe" in models.metrics.counting_clip_zero_shot
    x = torch.rand(2, 3, 96, 96)
    a, b = load_run(None, m).encode(x), load_run(None, base).encode(x)  # (B, S, E) each
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_cached_and_deterministic(small_world, small_models, tmp_path, capsys):
    root = small_models.parent
    before = (root / "decoder" / "decoder_model.bin").stat().st_mtime_ns
    build_demo_models(small_world, root, size="small", seed=0)
    assert "cached" in capsys.readouterr().out
    assert (root / "decoder" / "decoder_model.bin").stat().st_mtime_ns == before
    again = build_demo_models(small_world, tmp_path / "again", size="small", seed=0).parent
    a = torch.load(root / "decoder" / "decoder_model.bin", weights_only=True)
    b = torch.load(again / "decoder" / "decoder_model.bin", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = load_file(root / "clip" / "open_clip_model.safetensors")
    cb = load_file(again / "clip" / "open_clip_model.safetensors")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert (root / "tokenizer" / "vocab.bpe").read_bytes() == (again / "tokenizer" / "vocab.bpe").read_bytes()


def test_cli_bad_data_dir(tmp_path):
    r = run_cli("demo-models", tmp_path / "missing", tmp_path / "out", "--size", "small")
    assert r.returncode == 2 and "p2_data folder not found" in r.stderr


def test_the_ablation_clip_is_the_old_design(small_world, small_models, tmp_path, monkeypatch):
    """clip_unstyled/ holds exactly the CLIP that the recipe without a style phase trains."""
    import dataclasses

    from hw3lib.pretraining import demo_models

    small = demo_models.DemoModelSettings.for_size("small")
    monkeypatch.setattr(demo_models.DemoModelSettings, "for_size",
                        classmethod(lambda cls, size: dataclasses.replace(small, clip_style_steps=0)))
    old = build_demo_models(small_world, tmp_path / "old", size="small", seed=0).parent
    assert not (old / "clip_unstyled").exists()
    a = load_file(small_models.parent / "clip_unstyled" / "open_clip_model.safetensors")
    b = load_file(old / "clip" / "open_clip_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_models_cache_follows_the_code_that_shapes_them(small_world, tmp_path, monkeypatch):
    """No version to bump by hand: editing a file in SHAPED_BY changes the fingerprint, so make demo rebuilds."""
    import sys

    from hw3lib.pretraining import demo_models

    (tmp_path / "shaping_module.py").write_text("RECIPE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(demo_models, "SHAPED_BY", demo_models.SHAPED_BY + ("shaping_module",))
    s = demo_models.DemoModelSettings.for_size("small")
    before = demo_models._fingerprint(small_world, "small", 0, s)
    assert demo_models._fingerprint(small_world, "small", 0, s) == before
    (tmp_path / "shaping_module.py").write_text("RECIPE = 2\n")
    assert demo_models._fingerprint(small_world, "small", 0, s) != before
    sys.modules.pop("shaping_module", None)
