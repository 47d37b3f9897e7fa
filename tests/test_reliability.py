"""Fault injection and bad input against every entry point.

Kill tests SIGKILL `hw3 train` between steps, inside validation and in the middle of checkpoint writes
(after the data is written, before the rename), then resume: the final trainable weights equal an
uninterrupted run's bit for bit, and no checkpoint is ever unreadable. `hw3 caption` / `hw3 zeroshot`
killed mid-write leave no partial output. The bad-input table runs every subcommand in-process."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from hw3lib.app.cli import main
from hw3lib.models.captioner import read_checkpoint

from .conftest import ROOT

# between steps, inside a validation, and mid-write of each file a resume depends on
FAULTS = ["step:4", "validation:2", "write:resume.pt:2"]


def hw3(*args, fault=None, timeout=600):
    """`hw3 ARGS` in a new process; with `fault` ("POINT:N") killed the N-th time it passes POINT."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    entry = ["-m", "tests.faults", fault, "0"] if fault else ["-m", "hw3lib"]
    return subprocess.run([sys.executable, *entry, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def train_args(small_models, small_world, out):
    return ["train", ROOT / "configs" / "demo" / "lora16.toml", "--assets", small_models, "--data",
            small_world / "p2_data", "--out", out, "--max_steps=7", "--val_every=2", "--select_images=4",
            "--batch_size=16", "--lora_r=2", "--device=cpu"]


def check_run_folder(run):
    """Every checkpoint present must load; no temporary file may be mistaken for one."""
    for f in run.glob("checkpoint-*.safetensors"):
        read_checkpoint(f)
    if (run / "resume.pt").exists():
        torch.load(run / "resume.pt", weights_only=True)
    for line in (run / "log.jsonl").read_text().splitlines()[:-1]:
        json.loads(line)


@pytest.fixture(scope="module")
def reference(small_models, small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = hw3(*train_args(small_models, small_world, out))
    assert r.returncode == 0, r.stderr[-2000:]
    return read_checkpoint(out / "checkpoint-last.safetensors")[1]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_kill_and_resume_equals_uninterrupted(small_models, small_world, tmp_path, reference, fault):
    out = tmp_path / "run"
    r = hw3(*train_args(small_models, small_world, out), fault=fault)
    assert r.returncode == -9, f"fault {fault} did not fire: {r.returncode} {r.stderr[-500:]}"
    check_run_folder(out)
    r = hw3(*train_args(small_models, small_world, out))
    assert r.returncode == 0, r.stderr[-2000:]
    check_run_folder(out)
    assert not list(out.glob(".*.tmp")), "stale temporaries are cleaned on restart"
    final = read_checkpoint(out / "checkpoint-last.safetensors")[1]
    assert final.keys() == reference.keys()
    for k in reference:
        assert torch.equal(final[k], reference[k]), f"{fault}: {k} differs from the uninterrupted run"


def test_killed_caption_and_zeroshot_leave_no_partial_output(small_models, small_world, tmp_path):
    from hw3lib.core.manifest import load_manifest

    m = load_manifest(small_models)
    out = tmp_path / "pred.json"
    r = hw3("caption", small_world / "p3_data" / "images", out, m.decoder.weights, "--assets", small_models,
            "--max-len", "5", "--device", "cpu", "--untrained", fault="write:pred.json:1")
    assert r.returncode == -9 and not out.exists()
    csv = tmp_path / "pred.csv"
    csv.write_text("old\n")
    p1 = small_world / "p1_data"
    r = hw3("zeroshot", p1 / "val", p1 / "id2label.json", csv, "--assets", small_models, "--device", "cpu",
            fault="write:pred.csv:1")
    assert r.returncode == -9 and csv.read_text() == "old\n"


# ---------------------------------------------------------------------------------------------- bad input


def _bad_inputs(small_models, small_world, tmp):
    p1, p2 = small_world / "p1_data", small_world / "p2_data"
    cfg = ROOT / "configs" / "demo" / "lora16.toml"
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    (tmp / "bad.toml").write_text("[train]\nlr = -1.0\n")
    manifest = json.loads(small_models.read_text())
    manifest["decoder"]["weights"] = "missing/decoder_model.bin"
    (tmp / "assets.json").write_text(json.dumps(manifest))
    from hw3lib.core.manifest import load_manifest

    dec = load_manifest(small_models).decoder.weights
    (tmp / "foreign.safetensors").write_bytes(b"not a checkpoint")
    preds = {p.stem: "a red circle" for p in (p2 / "images" / "val").iterdir()}
    missing = dict(list(preds.items())[1:])
    (tmp / "missing.json").write_text(json.dumps(missing))
    (tmp / "nonstr.json").write_text(json.dumps({k: None for k in preds}))
    (tmp / "broken.json").write_text("{not json")
    ev = ["--images", p2 / "images" / "val", "--annotations", p2 / "val.json", "--no-clip"]
    return [
        (["demo-data", tmp / "full", "--size", "small"], "not empty"),
        (["demo-models", tmp / "nowhere", tmp / "m"], "p2_data folder not found"),
        (["zeroshot", tmp / "nowhere", p1 / "id2label.json", tmp / "o.csv", "--assets", small_models], "not found"),
        (["zeroshot", p1 / "val", p1 / "id2label.json", tmp / "o.csv", "--assets", tmp / "assets.json"], "missing file"),
        (["zeroshot", p1 / "val", p1 / "id2label.json", tmp / "o.csv", "--assets", small_models, "--templates", "x"],
         "unknown template set"),
        (["zeroshot", p1 / "val", p1 / "id2label.json", tmp / "o.csv", "--assets", small_models, "--template", "hi"],
         "no {object} placeholder"),
        (["train", cfg, "--assets", small_models, "--data", p2, "--out", tmp / "r", "--nope=1"], "unknown setting"),
        (["train", cfg, "--assets", small_models, "--data", p2, "--out", tmp / "r", "--epochs=two"], "not a valid int"),
        (["train", tmp / "bad.toml", "--assets", small_models, "--data", p2, "--out", tmp / "r"], "lr=-1.0"),
        (["train", tmp / "none.toml", "--assets", small_models, "--data", p2, "--out", tmp / "r"], "config file not found"),
        (["train", cfg, "--assets", tmp / "assets.json", "--data", p2, "--out", tmp / "r"], "missing file"),
        (["train", cfg, "--assets", small_models, "--data", tmp / "nowhere", "--out", tmp / "r"], "not found"),
        (["caption", p2 / "images" / "val", tmp / "p.json", dec, "--checkpoint", tmp / "foreign.safetensors",
          "--assets", small_models], "not a readable safetensors checkpoint"),
        (["caption", tmp / "nowhere", tmp / "p.json", dec, "--assets", small_models], "no such image file or folder"),
        (["caption", p2 / "images" / "val", tmp / "p.json", tmp / "nope.bin", "--assets", small_models],
         "decoder weights file not found"),
        (["evaluate", tmp / "missing.json", *ev], "1 missing"),
        (["evaluate", tmp / "nonstr.json", *ev], "not strings"),
        (["evaluate", tmp / "broken.json", *ev], "invalid JSON"),
        (["evaluate", tmp / "nope.json", *ev], "file not found"),
        (["attention", tmp / "nope.jpg", "--assets", small_models, "--out", tmp / "a"], "no such image file or folder"),
        (["export-decoder", tmp / "nowhere", tmp / "d.bin"], "no model.safetensors"),
    ]


def test_bad_input_table(small_models, small_world, tmp_path, capsys):
    cases = _bad_inputs(small_models, small_world, tmp_path)
    for args, msg in cases:
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        lines = [x for x in err.strip().splitlines() if x.startswith("error: ")]
        assert code == 2, (args, err)
        assert len(lines) == 1 and msg in lines[0], (args, err)
        assert "Traceback" not in err, (args, err)
    commands = {a[0] for a, _ in cases}
    assert commands == {"demo-data", "demo-models", "zeroshot", "train", "caption", "evaluate", "attention",
                        "export-decoder"}


# ---------------------------------------------------------------------------------------------- security


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_state_with_code_is_refused_without_running(small_models, small_world, tmp_path):
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "resume.pt", "wb") as f:
        pickle.dump({"trainable": _Payload(str(marker))}, f)
    r = hw3(*train_args(small_models, small_world, out))
    assert r.returncode != 0 and not marker.exists()
    assert "resume.pt: not a readable resume state" in r.stderr and "Traceback" not in r.stderr


def test_nothing_touches_the_network_for_local_assets(small_models, small_world, tmp_path):
    """Sockets are disabled in the child: captioning and evaluation with local files still work."""
    (tmp_path / "sitecustomize.py").write_text(
        "import socket\n"
        "def _no(*a, **k):\n    raise OSError('network disabled by the test')\n"
        "socket.socket.connect = _no\nsocket.create_connection = _no\n")
    from hw3lib.core.manifest import load_manifest

    env = dict(os.environ, PYTHONPATH=str(tmp_path), TQDM_DISABLE="1")
    env.pop("HF_HUB_OFFLINE", None)  # offline mode must not be what saves us
    m = load_manifest(small_models)
    r = subprocess.run([sys.executable, "-m", "hw3lib", "caption", str(small_world / "p3_data" / "images"),
                        str(tmp_path / "p.json"), m.decoder.weights, "--assets", str(small_models), "--max-len", "5",
                        "--device", "cpu", "--untrained"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
