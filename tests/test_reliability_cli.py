"""Reliability II, through the `hw3` command line as a user runs it: no command writes over one of its
inputs (or into an input folder); every bad argument ends with exit 2 and one `error:` line naming the
file or argument, with no traceback and every input byte-identical afterwards; the run folder is locked
(and the lock does not outlive a killed process); wrong results became errors or right results."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from .conftest import ROOT, lock_held_elsewhere, private_copies, run_cli

CONFIG = ROOT / "configs" / "demo" / "lora16.toml"


def fingerprint(*paths) -> dict:
    """sha256 of every file under the given files/folders."""
    out = {}
    for p in map(Path, paths):
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())) if p.exists() else []:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def refused(r, *needles):
    """Exit 2, exactly one line on stderr, an `error:` line, no traceback; returns the line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def check_refused(args, inputs, *needles):
    before = fingerprint(*inputs)
    assert before, "the test must watch some input files"
    line = refused(run_cli(*args), *needles)
    assert fingerprint(*inputs) == before
    return line


@pytest.fixture(scope="module")
def world(small_world, small_models, small_run, tmp_path_factory):
    """Private copies (tests may try to damage them): data, manifest + models, a trained run."""
    return private_copies(small_world, small_models, small_run, tmp_path_factory.mktemp("rel2"))


# -- outputs never overwrite inputs: one case (or more) per subcommand --------------------------


def test_no_overwrite_demo_data_onto_a_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    check_refused(["demo-data", target, "--size", "small"], [target], "is a file")


def test_no_overwrite_demo_models_into_its_data(world):
    data = world["data"]
    check_refused(["demo-models", data, data / "p1_data" / "models", "--size", "small"], [data], "input folder")


def test_no_overwrite_zeroshot_id2label(world):
    p1 = world["data"] / "p1_data"
    check_refused(["zeroshot", p1 / "val", p1 / "id2label.json", p1 / "id2label.json", "--assets", world["assets"]],
                  [p1], "OUT_CSV", "refusing to write over an input")


def test_no_overwrite_train_out_inside_data(world):
    p2 = world["data"] / "p2_data"
    check_refused(["train", CONFIG, "--data", p2, "--out", p2 / "images" / "run", "--assets", world["assets"]],
                  [p2, CONFIG], "--out", "input folder")


def test_no_overwrite_caption_decoder(world):
    val = world["data"] / "p2_data" / "images" / "val"
    check_refused(["caption", val, world["decoder"], world["decoder"], "--assets", world["assets"], "--untrained"],
                  [val, world["decoder"]], "OUT_JSON", "over an input")
    check_refused(["caption", val, val / "pred.json", world["decoder"], "--assets", world["assets"], "--untrained"],
                  [val], "inside the input folder")


@pytest.mark.parametrize("target", ["annotations", "pred"])
def test_no_overwrite_evaluate_per_image(world, tmp_path, target):
    p2 = world["data"] / "p2_data"
    refs = json.loads((p2 / "val.json").read_text())
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({Path(im["file_name"]).stem: "a shape" for im in refs["images"]}))
    out = p2 / "val.json" if target == "annotations" else pred
    check_refused(["evaluate", pred, "--images", p2 / "images" / "val", "--annotations", p2 / "val.json",
                   "--no-clip", "--tokenizer", "python", "--per-image", out], [pred, p2 / "val.json"], "--per-image")


def test_no_overwrite_attention_outputs(world):
    images = world["data"] / "p3_data" / "images"
    check_refused(["attention", images, "--checkpoint", world["run"], "--assets", world["assets"], "--out", images],
                  [images], "--out")
    one = sorted(images.iterdir())[0]
    check_refused(["attention", one, "--checkpoint", world["run"], "--assets", world["assets"], "--out",
                   world["root"] / "figs", "--html", one], [images], "--html")


def test_no_overwrite_export_decoder_input(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)).save_pretrained(src)
    check_refused(["export-decoder", src, src / "model.safetensors"], [src], "OUT")


# -- wrong results became errors or right results -------------------------------------------------


def test_a_second_train_into_a_locked_folder_refuses_and_a_killed_lock_holder_frees_it(world, tmp_path):
    out = tmp_path / "run"
    args = ["train", CONFIG, "--data", world["data"] / "p2_data", "--out", out, "--assets", world["assets"],
            "--max_steps=2", "--select_images=2", "--lora_r=2", "--device=cpu"]
    with lock_held_elsewhere("run_lock", out) as holder:
        line = refused(run_cli(*args), "in use by another hw3 train", f"pid {holder.pid}")
        assert str(out) in line and not (out / "config.json").exists()
    r = run_cli(*args)  # the kernel dropped the dead holder's lock
    assert r.returncode == 0, r.stderr[-2000:]


def test_line_separators_inside_a_caption_do_not_shift_other_images(world, tmp_path):
    p2 = world["data"] / "p2_data"
    refs = json.loads((p2 / "val.json").read_text())
    keys = [Path(im["file_name"]).stem for im in refs["images"]]
    base = {k: f"a small {'red' if i % 2 else 'blue'} shape" for i, k in enumerate(keys)}
    scores = {}
    for name, first in (("clean", "a big green circle here"), ("separators", "a big\rgreen\u2028circle\u2029here\f\v")):
        pred = tmp_path / f"{name}.json"
        pred.write_text(json.dumps(base | {keys[0]: first}))
        r = run_cli("evaluate", pred, "--images", p2 / "images" / "val", "--annotations", p2 / "val.json",
                    "--no-clip", "--tokenizer", "ptb" if shutil.which("java") else "python",
                    "--per-image", tmp_path / f"{name}.scores.json")
        assert r.returncode == 0, r.stderr
        result = json.loads((tmp_path / f"{name}.scores.json").read_text())
        scores[name] = (result["CIDEr"], {k: v["CIDEr"] for k, v in result["per_image"].items()})
    assert scores["clean"] == scores["separators"]
    assert any(v > 0 for v in scores["clean"][1].values())


def test_checkpoint_decoder_must_match_the_manifest(world, tmp_path):
    m = json.loads(world["assets"].read_text())
    m["decoder"]["n_head"] = 1  # the small decoder was trained with 2 heads
    base = world["assets"].parent
    for part in m.values():
        for k, v in part.items():
            if isinstance(v, str) and (base / v).exists():
                part[k] = str(base / v)
    wrong = tmp_path / "assets.json"
    wrong.write_text(json.dumps(m))
    val = world["data"] / "p2_data" / "images" / "val"
    check_refused(["caption", val, tmp_path / "p.json", world["decoder"], "--assets", wrong, "--checkpoint",
                   world["run"]], [val, world["run"]], "trained with another decoder", "n_head")


def test_duplicate_class_ids_are_refused(world, tmp_path):
    p1 = world["data"] / "p1_data"
    labels = json.loads((p1 / "id2label.json").read_text())
    bad = tmp_path / "id2label.json"
    bad.write_text(json.dumps(labels | {"01": "impostor"}))
    check_refused(["zeroshot", p1 / "val", bad, tmp_path / "p.csv", "--assets", world["assets"]], [bad],
                  "'01'", "same class id 1")


def test_csv_quotes_file_names_with_commas(world, tmp_path):
    import csv

    p1 = world["data"] / "p1_data"
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((p1 / "val").iterdir())[:2]
    shutil.copy(src[0], folder / "a,b.png")
    shutil.copy(src[1], folder / 'q"uote.png')
    r = run_cli("zeroshot", folder, p1 / "id2label.json", tmp_path / "p.csv", "--assets", world["assets"],
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader((tmp_path / "p.csv").open(newline="")))
    assert rows[0] == ["filename", "label"] and sorted(r[0] for r in rows[1:]) == ["a,b.png", 'q"uote.png']
    assert all(len(row) == 2 for row in rows)


def test_equal_stems_are_refused(world, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((world["data"] / "p3_data" / "images").iterdir())[0]
    Image.open(src).save(folder / "a.png")
    Image.open(src).convert("RGB").save(folder / "a.jpg")
    check_refused(["caption", folder, "-", world["decoder"], "--assets", world["assets"], "--untrained"], [folder],
                  "same name without extension")
    check_refused(["attention", folder, "--checkpoint", world["run"], "--assets", world["assets"], "--out",
                   tmp_path / "figs"], [folder], "same name without extension")


@pytest.mark.parametrize("args,needle", [
    (["--layers", "99"], "--layers: no layer 99"),
    (["--heads", "7"], "--heads: no head 7"),
    (["--layers", "two"], "--layers"),
])
def test_attention_layer_and_head_indices_are_checked_first(world, tmp_path, args, needle):
    images = world["data"] / "p3_data" / "images"
    check_refused(["attention", images, "--checkpoint", world["run"], "--assets", world["assets"], "--out",
                   tmp_path / "figs", *args], [images], needle)
    assert not (tmp_path / "figs").exists()


# -- one line for every bad argument, checked before any work ---------------------------------------


def bad_cases(w, tmp):
    p2 = w["data"] / "p2_data"
    val = p2 / "images" / "val"
    cap = ["caption", val, tmp / "p.json", w["decoder"], "--assets", w["assets"], "--untrained"]
    train = ["train", CONFIG, "--data", p2, "--out", tmp / "run", "--assets", w["assets"]]
    return {
        "beams 0": (cap + ["--beams", "0"], "--beams"),
        "batch-size 0": (cap + ["--batch-size", "0"], "--batch-size"),
        "max-len 0": (cap + ["--max-len", "0"], "--max-len"),
        "device tpu": (cap + ["--device", "tpu"], "--device"),
        "seed -1": (["demo-data", tmp / "w", "--seed", "-1"], "--seed"),
        "log_every=0": (train + ["--log_every=0"], "log_every"),
        "max_steps=-1": (train + ["--max_steps=-1"], "max_steps"),
        "max_caption_tokens > block": (train + ["--max_caption_tokens=5000", "--device=cpu"], "max_caption_tokens"),
        "output is a folder": (["caption", val, tmp, w["decoder"], "--assets", w["assets"], "--untrained",
                                "--max-len", "2"], str(tmp)),
        "output parent is a file": (["caption", val, tmp / "afile" / "p.json", w["decoder"], "--assets", w["assets"],
                                     "--untrained", "--max-len", "2"], "afile"),
        "output under /proc": (["caption", val, "/proc/hw3-p.json", w["decoder"], "--assets", w["assets"],
                                "--untrained", "--max-len", "2"], "/proc"),
    }


@pytest.mark.parametrize("case", ["beams 0", "batch-size 0", "max-len 0", "device tpu", "seed -1", "log_every=0",
                                  "max_steps=-1", "max_caption_tokens > block", "output is a folder",
                                  "output parent is a file", "output under /proc"])
def test_bad_arguments_give_one_line(world, tmp_path, case):
    (tmp_path / "afile").write_text("x")
    args, needle = bad_cases(world, tmp_path)[case]
    check_refused(args, [world["data"] / "p2_data", world["assets"], world["decoder"]], needle)
    assert not (tmp_path / "run" / "config.json").exists()


def test_empty_val_split_and_bad_config_table_and_manifest_type(world, tmp_path):
    p2 = shutil.copytree(world["data"] / "p2_data", tmp_path / "p2_data")
    (p2 / "val.json").write_text(json.dumps({"images": [], "annotations": []}))
    check_refused(["train", CONFIG, "--data", p2, "--out", tmp_path / "run", "--assets", world["assets"],
                   "--device=cpu"], [p2], "val split has no images")
    cfg = tmp_path / "bad.toml"
    cfg.write_text("train = 5\n")
    check_refused(["train", cfg, "--data", p2, "--out", tmp_path / "run2", "--print-config"], [cfg], "[train]")
    m = json.loads(world["assets"].read_text())
    m["decoder"]["n_head"] = "twelve"
    bad = tmp_path / "assets.json"
    bad.write_text(json.dumps(m))
    check_refused(["caption", p2 / "images" / "val", "-", world["decoder"], "--assets", bad, "--untrained"], [bad],
                  "decoder.n_head='twelve'", "valid integer")


def test_checkpoint_with_missing_or_extra_keys(world, tmp_path):
    from safetensors.torch import load_file, save_file

    from hw3lib.models.captioner import read_checkpoint

    src = world["run"] / "checkpoint-best.safetensors"
    _, tensors, _ = read_checkpoint(src)
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    val = world["data"] / "p2_data" / "images" / "val"
    for name, sd in (("missing", dict(list(tensors.items())[1:])), ("extra", tensors | {"bogus.weight": next(
            iter(tensors.values())).clone()})):
        ck = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(ck), metadata=meta)
        check_refused(["caption", val, tmp_path / "p.json", world["decoder"], "--assets", world["assets"],
                       "--checkpoint", ck], [ck, val], name)
    assert load_file(str(src))


def test_hostile_images(world, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (20000, 1)).save(folder / "strip.png")  # 143 bytes; 4.5e9 pixels once resized
    check_refused(["caption", folder, "-", world["decoder"], "--assets", world["assets"], "--untrained"], [folder],
                  "strip.png", "50:1")


def test_non_ascii_bytes_in_file_names(world, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((world["data"] / "p3_data" / "images").iterdir())[0]
    shutil.copy(src, os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    r = run_cli("caption", folder, "-", world["decoder"], "--assets", world["assets"], "--untrained", "--max-len", "3",
                "--device", "cpu", isolated=True)  # what a real stdout does with the undecodable byte
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("caf\\udce9\t")
    r = run_cli("caption", folder, tmp_path / "p.json", world["decoder"], "--assets", world["assets"], "--untrained",
                "--max-len", "3", "--device", "cpu")
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr, r.stderr
    if r.returncode == 2:
        refused(r, "p.json", "not valid UTF-8")
