"""`hw3 demo-models`: real training on the demo world, cached, deterministic, in the real formats."""

import json

import torch
from safetensors.torch import load_file

from hw3lib.app.demo_models import build_demo_models

from .conftest import run_cli


def test_outputs_and_metrics(small_models):
    root = small_models.parent
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["clip_recall_at_1_val"] > metrics["clip_recall_chance"]  # above chance: it learned something
    assert metrics["decoder_perplexity_val"] < metrics["decoder_vocab_size"] / 4  # it learned something
    assert metrics["gpt_loss"][-1] < metrics["gpt_loss"][0] and metrics["clip_loss"][-1] < metrics["clip_loss"][0]
    for f in ("tokenizer/encoder.json", "tokenizer/vocab.bpe", "clip/open_clip_model.safetensors",
              "encoder/clip_visual.safetensors", "decoder/decoder_model.bin"):
        assert (root / f).is_file(), f
    visual = load_file(root / "encoder" / "clip_visual.safetensors")
    assert "visual.class_embedding" in visual and all(k.startswith("visual.") for k in visual)


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
