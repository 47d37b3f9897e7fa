"""The `hw3` command line as a newcomer meets it, through subprocesses: help, version, --debug anywhere,
each command checking only what it reads (inputs first), no silent untrained captions, single images
and stdout output, --print-config, and the warning for a GPU that torch cannot use."""

import json
import os
import stat
import sys

import pytest

from hw3lib.app.cli import build_parser
from hw3lib.core.manifest import load_manifest
from hw3lib.training.config import load_config, settings_table

from .conftest import ROOT, run_cli

COMMANDS = ["demo-data", "demo-models", "zeroshot", "train", "caption", "evaluate", "attention", "export-decoder"]


def one_error_line(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_every_command_has_description_example_and_helped_arguments():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "caption" in a.choices).choices
    assert sorted(sub) == sorted(COMMANDS)
    for name, p in sub.items():
        assert p.description and p.epilog.startswith("example"), name
        assert f"hw3 {name}" in p.epilog, name
        for action in p._actions:
            assert action.help, f"hw3 {name}: {action.dest} has no help"


@pytest.mark.parametrize("command", ["caption", "zeroshot", "train"])
def test_help_shows_defaults_and_examples(command):
    r = run_cli(command, "--help")
    assert r.returncode == 0
    assert "(default: " in r.stdout and "example" in r.stdout


def test_train_help_lists_every_setting_from_the_dataclasses():
    out = run_cli("train", "--help").stdout
    rows = settings_table()
    assert len(rows) > 25
    for table, key, kind, default, comment in rows:
        assert f"--{key}={kind}" in out and f"default {default!r}" in out, key
        assert comment, f"{table}.{key} has no comment in its dataclass"
        assert comment.split()[0] in out, key


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("hw3 ")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand(where, tmp_path):
    args = ["caption", str(tmp_path / "none"), "-", str(tmp_path / "dec.bin")]
    r = run_cli(*(["--debug"] + args if where == "before" else args + ["--debug"]))
    assert r.returncode == 2 and "Traceback" in r.stderr and "no such image file or folder" in r.stderr
    one_error_line(run_cli(*args), "none")


def test_print_config_round_trips(tmp_path):
    cfg = ROOT / "configs" / "demo" / "lora16.toml"
    (tmp_path / "data").mkdir()
    r = run_cli("train", cfg, "--data", tmp_path / "data", "--out", tmp_path / "run", "--print-config", "--lr=1e-4",
                "--lora_targets", "attn.c_attn,mlp.c_fc")
    assert r.returncode == 0, r.stderr
    (tmp_path / "resolved.toml").write_text(r.stdout)
    want = load_config(cfg, {"lr": "1e-4", "lora_targets": "attn.c_attn,mlp.c_fc"})
    assert load_config(tmp_path / "resolved.toml") == want
    assert not (tmp_path / "run").exists()


def broken_manifest(small_models, tmp_path, keep):
    """A copy of the small manifest in which every part except `keep` names missing files."""
    m = json.loads(open(small_models).read())
    base = os.path.dirname(small_models)
    for part, entry in m.items():
        if not isinstance(entry, dict):
            continue
        for k, v in entry.items():
            if isinstance(v, str) and os.path.exists(os.path.join(base, v)):
                entry[k] = os.path.join(base, v) if part in keep else str(tmp_path / "gone" / os.path.basename(v))
    out = tmp_path / f"assets-{'-'.join(sorted(keep)) or 'none'}.json"
    out.write_text(json.dumps(m))
    return out


def test_zeroshot_and_evaluate_need_only_clip(small_models, small_world, tmp_path):
    assets = broken_manifest(small_models, tmp_path, keep={"clip"})
    p1 = small_world / "p1_data"
    r = run_cli("zeroshot", p1 / "val", p1 / "id2label.json", tmp_path / "pred.csv", "--assets", assets, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # the input is checked before the manifest: a missing folder is named, not a model file
    one_error_line(run_cli("zeroshot", tmp_path / "nope", p1 / "id2label.json", tmp_path / "p.csv", "--assets",
                           broken_manifest(small_models, tmp_path, keep=set())), "nope")
    p2 = small_world / "p2_data"
    refs = json.loads((p2 / "val.json").read_text())
    preds = {os.path.splitext(im["file_name"])[0]: "a shape" for im in refs["images"]}
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    r = run_cli("evaluate", tmp_path / "pred.json", "--images", p2 / "images" / "val", "--annotations",
                p2 / "val.json", "--assets", assets, "--tokenizer", "python", "--device", "cpu")
    assert r.returncode == 0 and "CLIPScore" in r.stdout, r.stderr
    nothing = broken_manifest(small_models, tmp_path, keep=set())
    r = run_cli("evaluate", tmp_path / "pred.json", "--images", p2 / "images" / "val", "--annotations",
                p2 / "val.json", "--assets", nothing, "--tokenizer", "python", "--no-clip")
    assert r.returncode == 0 and "CIDEr" in r.stdout, r.stderr


def test_caption_needs_a_checkpoint_or_untrained(small_models, small_world, tmp_path):
    val = small_world / "p2_data" / "images" / "val"
    dec = load_manifest(small_models).decoder.weights
    r = run_cli("caption", val, tmp_path / "out.json", dec, "--assets", small_models, "--device", "cpu")
    one_error_line(r, "--checkpoint", "--untrained")
    assert not (tmp_path / "out.json").exists()
    r = run_cli("caption", val, tmp_path / "out.json", dec, "--assets", small_models, "--device", "cpu", "--untrained")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "out.json").read_text())) == len(list(val.iterdir()))
    assets = broken_manifest(small_models, tmp_path, keep={"encoder", "decoder", "tokenizer"})
    r = run_cli("caption", val, "-", dec, "--assets", assets, "--device", "cpu", "--untrained", "--max-len", "3")
    assert r.returncode == 0, r.stderr  # caption needs no CLIP


def test_caption_single_images_to_stdout(small_models, small_world, small_run, tmp_path):
    val = small_world / "p2_data" / "images" / "val"
    images = sorted(val.iterdir())[:2]
    dec = load_manifest(small_models).decoder.weights
    common = [dec, "--assets", small_models, "--checkpoint", small_run, "--device", "cpu"]
    r = run_cli("caption", *images, "-", *common)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split("\t") for line in r.stdout.splitlines())
    assert sorted(lines) == [p.stem for p in images]
    r = run_cli("caption", val, tmp_path / "all.json", *common)
    assert r.returncode == 0, r.stderr
    folder = json.loads((tmp_path / "all.json").read_text())
    assert all(folder[k] == v for k, v in lines.items())
    one_error_line(run_cli("caption", small_world / "p2_data" / "val.json", "-", *common), "not an image file")
    r = run_cli("caption", *images, "-", *common, "--no-repeat-ngram-size", "2", "--repetition-penalty", "1.5")
    assert r.returncode == 0, r.stderr
    from hw3lib.models.loading import load_tokenizer

    tok = load_tokenizer(load_manifest(small_models))
    for caption in dict(line.split("\t") for line in r.stdout.splitlines()).values():
        ids = tok.encode(caption)  # the ban is on tokens: " a" mid-caption is not the first word's "a"
        assert len(set(zip(ids, ids[1:], strict=False))) == len(ids) - 1, caption  # no token pair twice
    for bad, name in ((["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size"),
                      (["--repetition-penalty", "0"], "repetition_penalty")):
        one_error_line(run_cli("caption", *images, "-", *common, *bad), name)
        one_error_line(run_cli("attention", *images, "--checkpoint", small_run, "--assets", small_models, "--out",
                               tmp_path / "att", *bad), name)


def test_device_auto_warns_once_when_an_nvidia_gpu_is_visible(small_models, small_world, tmp_path):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a real NVIDIA device is present")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    p1 = small_world / "p1_data"
    env_path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    import subprocess

    r = subprocess.run([sys.executable, "-m", "hw3lib", "zeroshot", p1 / "val", p1 / "id2label.json",
                        tmp_path / "p.csv", "--assets", small_models, "--device", "auto"],
                       capture_output=True, text=True, env=dict(os.environ, PATH=env_path), timeout=300)
    import torch

    warned = [ln for ln in r.stderr.splitlines() if "NVIDIA GPU is visible" in ln]
    assert r.returncode == 0, r.stderr
    assert len(warned) == (0 if torch.cuda.is_available() else 1), r.stderr
    assert all(ln.startswith("warning: ") for ln in warned)


def test_main_restores_the_warning_hook(tmp_path, capsys, monkeypatch):
    """Inside `hw3` a warning prints as one line; after `main` returns, the process's hook is its own again
    (a notebook or test that calls `main` keeps its warnings as they were)."""
    import warnings

    from hw3lib.app import cli

    before = warnings.showwarning
    seen = []

    def warn_and_fail(args):
        warnings.warn("careful", UserWarning, stacklevel=1)
        seen.append(warnings.showwarning)
        return 0

    parser_build = cli.build_parser

    def build():
        p = parser_build()
        p._subparsers._group_actions[0].choices["export-decoder"].set_defaults(func=warn_and_fail)
        return p

    monkeypatch.setattr(cli, "build_parser", build)
    (tmp_path / "gpt2").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["export-decoder", str(tmp_path / "gpt2"), str(tmp_path / "o.bin")]) == 0
    assert seen == [cli._warn_one_line] and warnings.showwarning is before
    assert "warning: careful" in capsys.readouterr().err
