"""The training loop: resume equals an uninterrupted run, NaN stops cleanly, the feature cache runs the
encoder once per image, configs are validated, the CLI trains, and 2-process DDP works on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hw3lib.core.data import read_caption_file
from hw3lib.core.errors import HW3Error
from hw3lib.core.manifest import load_manifest
from hw3lib.models.captioner import CaptionerConfig, build_captioner, read_checkpoint
from hw3lib.models.loading import encoder_data_config, encoder_transform, load_tokenizer
from hw3lib.training.config import TrainConfig, load_config
from hw3lib.training.feature_cache import FeatureCache, FeatureSource, encoder_fingerprint
from hw3lib.training.loop import HeldOut, caption_data, fit

from .conftest import ROOT, run_cli


class Crash(Exception):
    pass


def setup(small_models, small_world, tmp_path, kind="lora", **train_kw):
    m = load_manifest(small_models)
    torch.manual_seed(0)
    model = build_captioner(m, CaptionerConfig(peft=kind, lora_r=4, adapter_dim=8, virtual_tokens=3))
    tok = load_tokenizer(m)
    p2 = small_world / "p2_data"
    cfg = TrainConfig(**({"epochs": 2, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "eta_min": 1e-5,
                          "val_every": 4, "select_images": 8, "log_every": 1, "select_metric": "loss", "max_steps": 14}
                         | train_kw))
    train = caption_data(read_caption_file(p2 / "train.json", p2 / "images" / "train"), tok, 40)
    val = caption_data(read_caption_file(p2 / "val.json", p2 / "images" / "val"), tok, 40)
    cache = FeatureCache(tmp_path / "cache", encoder_fingerprint(m.encoder, encoder_data_config(model.encoder)))
    tf = encoder_transform(model.encoder)
    return model, cfg, train, val, FeatureSource(model, train.paths, tf, cache), FeatureSource(model, val.paths, tf, cache)


def test_resume_equals_uninterrupted(small_models, small_world, tmp_path):
    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path)
    fit(model, train, cfg, tmp_path / "a", src, HeldOut(val, vsrc))
    reference = model.trainable_state_dict()

    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path)
    calls = {"n": 0}
    real = src.__call__

    def crashing(indices):
        calls["n"] += 1
        if calls["n"] == 11:  # mid-epoch, after the save at step 8
            raise Crash
        return real(indices)

    src_crash = FeatureSource(model, src.paths, src.transform, src.cache)
    src_crash.__class__ = type("Crashing", (FeatureSource,), {"__call__": lambda self, idx: crashing(idx)})
    with pytest.raises(Crash):
        fit(model, train, cfg, tmp_path / "b", src_crash, HeldOut(val, vsrc))
    state = torch.load(tmp_path / "b" / "resume.pt", weights_only=True)
    assert state["state"]["step"] == 8

    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path)  # a fresh process, in effect
    summary = fit(model, train, cfg, tmp_path / "b", src, HeldOut(val, vsrc))
    resumed = model.trainable_state_dict()
    assert summary.steps == 14 and resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log if "step" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 14  # no duplicated steps after the resume
    best = load_file(tmp_path / "b" / "checkpoint-best.safetensors")
    assert set(best) == set(reference)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_models, small_world, tmp_path):
    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path, val_every=2)
    calls = {"n": 0}

    class Poisoned(FeatureSource):
        def __call__(self, idx):
            calls["n"] += 1
            f = super().__call__(idx)
            return f * float("nan") if calls["n"] == 4 else f

    bad = Poisoned(model, src.paths, src.transform, src.cache)
    with pytest.raises(HW3Error, match="non-finite loss.*at step 3.*last good checkpoint kept"):
        fit(model, train, cfg, tmp_path / "run", bad, HeldOut(val, vsrc))
    _, tensors, info = read_checkpoint(tmp_path / "run" / "checkpoint-last.safetensors")
    assert info["meta"]["step"] == 2 and all(torch.isfinite(t).all() for t in tensors.values())


def test_feature_cache_runs_encoder_once_per_image(small_models, small_world, tmp_path):
    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path, epochs=2, val_every=0, max_steps=0)
    fit(model, train, cfg, tmp_path / "run", src, HeldOut(val, vsrc))
    assert src.encoder_calls == len(train.paths)  # two epochs, each image encoded once
    again = FeatureSource(model, src.paths, src.transform, FeatureCache(src.cache.root, src.cache.fingerprint))
    a = again([0, 1, 2])
    assert again.encoder_calls == 0
    live = FeatureSource(model, src.paths, src.transform, None)([0, 1, 2])
    torch.testing.assert_close(a, live)  # cached tokens equal a fresh encoder run
    other = FeatureSource(model, src.paths, src.transform, FeatureCache(src.cache.root, "another-encoder"))
    other([0])
    assert other.encoder_calls == 1  # a different encoder fingerprint misses
    entry = src.cache._file(src.cache.key(src.paths[0]))  # a train image's entry (val shares the cache)
    assert entry.is_file()
    entry.write_bytes(b"garbage")  # a damaged entry is recomputed, not trusted
    fresh = FeatureSource(model, src.paths, src.transform, FeatureCache(src.cache.root, src.cache.fingerprint))
    fresh(list(range(len(src.paths))))
    assert fresh.encoder_calls == 1


def test_augmentation_bypasses_cache(small_models, small_world, tmp_path):
    _, cfg = load_config(ROOT / "configs" / "report_lora16.toml")
    assert cfg.augment and cfg.hflip == 0.3 and cfg.lr == 3e-5 and cfg.batch_size == 8 and cfg.epochs == 10


@pytest.mark.parametrize("override, msg", [
    ({"lr": "-0.1"}, "invalid training setting.*lr=-0.1"), ({"epochs": "two"}, "not a valid int"),
    ({"learning_rate": "1"}, "unknown setting --learning_rate"), ({"peft": "bitfit"}, "unknown peft kind"),
    ({"amp": "fp8"}, "amp='fp8'")])
def test_bad_settings(override, msg):
    with pytest.raises(HW3Error, match=msg):
        load_config(ROOT / "configs" / "demo" / "lora16.toml", override)


def test_bad_config_files(tmp_path):
    (tmp_path / "a.toml").write_text("[train]\nlr = 'fast'\n")
    with pytest.raises(HW3Error, match=r"a.toml \[train\]: lr expects a number, got a string \('fast'\)"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "a2.toml").write_text("[train]\nepochs = 1.5\n")
    with pytest.raises(HW3Error, match="epochs expects an integer, got float"):
        load_config(tmp_path / "a2.toml")
    (tmp_path / "b.toml").write_text("[trian]\nlr = 1\n")
    with pytest.raises(HW3Error, match="unknown table"):
        load_config(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text("[train\n")
    with pytest.raises(HW3Error, match="invalid TOML"):
        load_config(tmp_path / "c.toml")


def test_cli_train_and_budget(small_models, small_world, tmp_path):
    args = ["train", ROOT / "configs" / "demo" / "lora16.toml", "--assets", small_models, "--data",
            small_world / "p2_data", "--out", tmp_path / "run", "--epochs=1", "--batch_size=32", "--select_images=6",
            "--lora_r", "2", "--device", "cpu"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trainable" in r.stdout and "validation" in r.stdout
    cfg, tensors, info = read_checkpoint(tmp_path / "run")
    assert cfg.lora_r == 2 and info["meta"]["step"] >= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"] is not None and 0 <= summary["best"]
    r = run_cli(*args[:-2], "--max_trainable=1000")
    assert r.returncode == 2 and "exceed the budget" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*args, "--bogus=1")
    assert r.returncode == 2 and "unknown setting --bogus" in r.stderr


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(small_models, small_world, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "hw3lib", "train", str(ROOT / "configs" / "demo" / "none.toml"), "--assets", str(small_models),
           "--data", str(small_world / "p2_data"), "--out", str(tmp_path / "ddp"), "--epochs=1",
           "--batch_size=8", "--select_images=4", "--device=cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["world_size"] == 2
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["steps"] == (600 - 4 * 5) // (8 * 2)  # 600 pairs less the 4 held-out images', over two ranks
    read_checkpoint(tmp_path / "ddp")


def test_checkpoint_chosen_on_held_out_training_images_never_val(small_models, small_world, tmp_path):
    """No val image is read by training: with every val image emptied (unreadable) the run trains,
    validates on the held-out training images (recorded, and never trained on), and logs the
    learning-curve measures; attention supervision without boxes.json is refused before any work."""
    import shutil

    from hw3lib.captioning.runs import train_run
    from hw3lib.training.selection import selection_split

    data = shutil.copytree(small_world, tmp_path / "hw3_data")
    for image in (data / "p2_data" / "images" / "val").iterdir():
        image.write_bytes(b"")
    out = tmp_path / "run"
    train_run(ROOT / "configs" / "demo" / "lora16.toml", small_models, data / "p2_data", out,
              {"max_steps": "4", "val_every": "2", "select_images": "10", "lora_r": "2", "device": "cpu",
               "attention_supervision": "1.0", "coverage": "see"})
    record = json.loads((out / "config.json").read_text())
    cs = read_caption_file(data / "p2_data" / "train.json", data / "p2_data" / "images" / "train")
    trained, held = selection_split(cs, 10)
    assert sorted(record["validated_on"]) == sorted(im.file_name for im in held.images)
    # never trained on: with every held-out image drawn otherwise, the last weights are the same to the bit
    from PIL import Image, ImageOps
    from safetensors.torch import load_file

    other = shutil.copytree(data, tmp_path / "other")
    for im in held.images:
        path = other / "p2_data" / "images" / "train" / im.file_name
        ImageOps.invert(Image.open(path).convert("RGB")).save(path, format="JPEG", quality=92)
    train_run(ROOT / "configs" / "demo" / "lora16.toml", small_models, other / "p2_data", tmp_path / "run_other",
              {"max_steps": "4", "val_every": "2", "select_images": "10", "lora_r": "2", "device": "cpu",
               "attention_supervision": "1.0", "coverage": "see"})
    last, last_other = load_file(out / "checkpoint-last.safetensors"), load_file(tmp_path / "run_other" /
                                                                                 "checkpoint-last.safetensors")
    assert last.keys() == last_other.keys() and all(torch.equal(last[k], last_other[k]) for k in last)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    checks = [e["validation"] for e in log if "validation" in e]
    assert [v["step"] for v in checks] == [2, 4]
    for v in checks:
        assert {"cider", "exact", "recall", "repeats", "pointing_named", "pointing_next"} <= set(v)
        assert 0 <= v["pointing_next"] <= 1
    steps = [e for e in log if "loss" in e]
    assert all({"ce", "coverage", "supervision"} <= set(e) for e in steps)
    assert all(e["loss"] == pytest.approx(e["ce"] + e["coverage"] + e["supervision"], rel=1e-5) for e in steps)

    (data / "p2_data" / "boxes.json").unlink()
    (data / "DEMO.json").unlink()
    with pytest.raises(HW3Error, match="attention_supervision=1.0 needs"):
        train_run(ROOT / "configs" / "demo" / "lora16.toml", small_models, data / "p2_data", tmp_path / "run2",
                  {"max_steps": "4", "select_images": "10", "lora_r": "2", "device": "cpu",
                   "attention_supervision": "1.0"})
    assert not (tmp_path / "run2").exists()


def test_early_stopping_on_a_hand_made_curve(small_models, small_world, tmp_path):
    """patience=2: the run stops at the second validation in a row without a new best (steps 2, 4, ... score
    1, 2, 3, 2.5, 2.9, 4: best at step 6, stopped at step 10, never reaching the last score); rerun on the
    same folder, it trains no further; patience=0 trains every step."""
    scores = [1.0, 2.0, 3.0, 2.5, 2.9, 4.0, 5.0]

    def scripted():
        it = iter(scores)
        return lambda model: {"cider": next(it)}

    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path, val_every=2, patience=2,
                                              select_metric="cider")
    summary = fit(model, train, cfg, tmp_path / "run", src, HeldOut(val, vsrc, scripted()))
    assert (summary.steps, summary.best, summary.best_step, summary.stopped) == (10, 3.0, 6, True)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["validation"]["step"] for e in log if "validation" in e] == [2, 4, 6, 8, 10]
    _, _, info = read_checkpoint(tmp_path / "run" / "checkpoint-best.safetensors")
    assert info["meta"]["step"] == 6
    again = fit(model, train, cfg, tmp_path / "run", src, HeldOut(val, vsrc, scripted()))
    assert (again.steps, again.stopped) == (10, True)

    model, cfg, train, val, src, vsrc = setup(small_models, small_world, tmp_path, val_every=2, patience=0,
                                              select_metric="cider")
    summary = fit(model, train, cfg, tmp_path / "all", src, HeldOut(val, vsrc, scripted()))
    assert (summary.steps, summary.best_step, summary.stopped) == (14, 14, False)


def test_a_setting_newer_than_a_finished_run_reads_as_its_default():
    from dataclasses import asdict

    from hw3lib.training.runfolder import same_settings

    cfg = TrainConfig(max_steps=5)
    stored = asdict(cfg)
    del stored["patience"]  # a run folder written before the setting existed
    assert same_settings(stored, cfg)
    assert not same_settings(stored, TrainConfig(max_steps=5, patience=3))
    assert not same_settings(stored | {"max_steps": 6}, cfg) and not same_settings(None, cfg)


def test_a_run_refuses_another_encoders_manifest(small_models, small_world, tmp_path):
    """A checkpoint records its encoder weights by content: loading it with a manifest whose encoder holds
    other weights is refused (it would caption in silence, and wrongly); a copy of the same models, in
    another folder, loads."""
    import shutil

    from safetensors.torch import save_file

    from hw3lib.captioning.runs import load_run, train_run

    out = tmp_path / "run"
    train_run(ROOT / "configs" / "demo" / "lora16.toml", small_models, small_world / "p2_data", out,
              {"max_steps": "2", "val_every": "2", "select_images": "4", "lora_r": "2", "device": "cpu",
               "attention_supervision": "0"})
    copied = shutil.copytree(os.path.dirname(small_models), tmp_path / "models")
    manifest = load_manifest(copied / os.path.basename(small_models))
    load_run(out, manifest)  # the same weights, elsewhere
    weights = load_file(manifest.encoder.checkpoint)
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1.0
    save_file(weights, manifest.encoder.checkpoint)
    with pytest.raises(HW3Error, match="trained on other encoder weights"):
        load_run(out, load_manifest(copied / os.path.basename(small_models)))


def test_jobs_go_to_the_pool_longest_first(tmp_path):
    """The shown captioner (whole epochs) first, then the runs that validate most, the rest in their order."""
    from hw3lib.captioning.study import SHOWN_ROW, ComparisonSpec, Recipe, longest_first

    configs = {n: ROOT / "configs" / "demo" / f"{n}.toml" for n in ("none", "lora16", "ia3")}
    p2 = tmp_path / "p2_data"
    spec = ComparisonSpec(configs, "assets.json", p2, tmp_path / "runs", "lora16",
                          ablation={"cross-entropy only": Recipe(p2, {"attention_supervision": "0"})},
                          shown=Recipe(p2, {"max_steps": "0", "epochs": "3", "patience": "2"}))
    jobs = spec.jobs()
    assert [j.name for j in jobs] == ["none", "lora16", "ia3", "cross-entropy only", SHOWN_ROW]
    assert [j.name for j in longest_first(jobs)] == [SHOWN_ROW, "lora16", "cross-entropy only", "none", "ia3"]
