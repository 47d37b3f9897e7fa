"""Reliability V (#38): a report that is whole or untouched, full disks named (on a real full file system),
a feature cache keyed by content, paths that are data and never shell, configs read strictly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from .conftest import ROOT, private_copies, run_cli
from .test_reliability_cli import fingerprint, refused

CONFIG = ROOT / "configs" / "demo" / "lora16.toml"


@pytest.fixture(scope="module")
def world(small_world, small_models, small_run, tmp_path_factory):
    return private_copies(small_world, small_models, small_run, tmp_path_factory.mktemp("rel5"))


# -- a real full disk: a small tmpfs (root only; skipped with the reason elsewhere) -----------------------


@pytest.fixture
def full_disk(tmp_path):
    """A mounted tmpfs of `size` bytes (a function: full_disk(size) -> its folder), unmounted afterwards."""
    mounts = []

    def mount(size: int) -> Path:
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("a real full disk needs root to mount a tmpfs")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> None:
    """Leave `folder`'s file system with no free block."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("writer", ["safetensors", "torch.save", "json", "pil"])
def test_a_full_disk_names_the_file_whatever_the_library_raises(full_disk, writer):
    from safetensors.torch import save_file

    from hw3lib.core.errors import HW3Error
    from hw3lib.core.files import atomic_path, atomic_write_json, writing

    disk = full_disk(1 << 20)
    fill(disk)
    target = disk / f"out.{writer}"
    big = {"w": torch.ones(64, 1024)}  # 256 KiB: more than is left
    with pytest.raises(HW3Error) as e:
        if writer == "safetensors":
            with atomic_path(target) as tmp:
                save_file(big, str(tmp))  # SafetensorError
        elif writer == "torch.save":
            with atomic_path(target) as tmp:
                torch.save(big, tmp)  # RuntimeError ... unexpected pos
        elif writer == "json":
            atomic_write_json(target, {"x": "y" * 300_000})
        else:
            with writing(target):
                Image.new("RGB", (512, 512)).save(target, format="PNG", compress_level=0)
    assert str(e.value).startswith(f"{target}: cannot write (")
    assert "no space left on device" in str(e.value).lower()
    assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_a_library_bug_is_not_called_a_full_disk(tmp_path):
    from hw3lib.core.files import atomic_path

    with pytest.raises(ZeroDivisionError), atomic_path(tmp_path / "x.bin"):
        raise ZeroDivisionError  # a bug stays visible, with plenty of room on the disk
    assert list(tmp_path.iterdir()) == []


def test_the_feature_cache_names_its_entry_on_a_full_disk(full_disk):
    from hw3lib.core.errors import HW3Error
    from hw3lib.training.feature_cache import FeatureCache

    disk = full_disk(256 << 10)
    img = disk / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    fill(disk)
    cache = FeatureCache(disk / "cache", "fp", memory_bytes=0)
    with pytest.raises(HW3Error, match=r"(?i)cache/.*\.safetensors: cannot write \(no space left on device\)"):
        cache.get([img], lambda paths: torch.ones(len(paths), 16, 1024))


@pytest.mark.slow
def test_demo_models_on_a_full_disk_leaves_the_folder_as_it_was(small_world, full_disk):
    disk = full_disk(64 << 10)  # room for the lock files and a little, not for the tokenizer
    models = disk / "models"
    models.mkdir()
    (models / "fingerprint.txt").write_text("an older build\n")  # a folder from before: it must stay whole
    (models / "assets.json").write_text("{}")
    before = fingerprint(models)
    fill(disk)
    r = run_cli("demo-models", small_world, models, "--size", "small", isolated=True)
    line = refused(r, "cannot write (No space left on device)", str(disk))
    assert "internal error" not in line
    assert fingerprint(models) == before
    assert sorted(p.name for p in disk.iterdir() if not p.name.startswith(".") or p.name.endswith(".partial")) == \
        ["filler", "models"]  # no staged folder left


def test_demo_models_swaps_in_a_complete_folder(tmp_path):
    """`staged_folder`: the new folder replaces the old whole; a failure inside leaves the old one."""
    from hw3lib.core.files import staged_folder

    target = tmp_path / "models"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(target) as stage:
        (stage / "half.txt").write_text("half")
        raise RuntimeError("killed half way")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with staged_folder(target) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_a_swap_cut_between_its_renames_is_recovered(tmp_path):
    from hw3lib.core.files import recover_swap

    (tmp_path / ".figures.old").mkdir()
    (tmp_path / ".figures.old" / "p1.png").write_text("old")
    recover_swap(tmp_path / "figures")  # crashed after figures -> .figures.old, before the new one moved in
    assert (tmp_path / "figures" / "p1.png").read_text() == "old"


# -- the feature cache is keyed by the encoder's content ---------------------------------------------


def _spec(path):
    from hw3lib.core.manifest import EncoderSpec

    return EncoderSpec("vit_tiny_patch16_224", checkpoint=str(path))


def test_an_encoder_copied_over_with_its_name_size_and_time_misses_the_cache(tmp_path):
    from hw3lib.training.feature_cache import encoder_fingerprint

    a, b = tmp_path / "a" / "enc.safetensors", tmp_path / "b" / "enc.safetensors"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_bytes(b"\1" * 4096)
    b.write_bytes(b"\2" * 4096)  # other weights, same size
    old = encoder_fingerprint(_spec(a), {"input_size": (3, 32, 32)})
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    shutil.copy2(b, a)  # cp -p: name, size and modification time as before
    assert a.stat().st_mtime_ns == b.stat().st_mtime_ns and a.stat().st_size == 4096
    assert encoder_fingerprint(_spec(a), {"input_size": (3, 32, 32)}) != old


def test_the_weights_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    from hw3lib.training import feature_cache

    w, memo = tmp_path / "enc.bin", tmp_path / "cache" / "weights-digests.json"
    w.write_bytes(b"\1" * 4096)
    reads = []
    real = feature_cache.file_digest
    monkeypatch.setattr(feature_cache, "file_digest", lambda p: reads.append(p) or real(p))
    first = feature_cache.weights_digest(w, memo)
    assert feature_cache.weights_digest(w, memo) == first and len(reads) == 1  # remembered: not read again
    st = w.stat()
    w.write_bytes(b"\2" * 4096)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and time; the status-change time moved
    assert feature_cache.weights_digest(w, memo) != first and len(reads) == 2
    memo.write_text("{not json")  # a damaged memo is rebuilt, never trusted
    assert feature_cache.weights_digest(w, memo) == real(w)


# -- paths are data, never shell ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["with space", "quote's \"here\"", "semi; touch {pwned}", "sub $(touch {pwned})",
                                  "back `touch {pwned}`", "make $(shell touch {pwned})"])
def test_make_report_takes_any_path_as_data(tmp_path, name):
    if not (ROOT / ".venv" / ".installed").is_file() or not shutil.which("make"):
        pytest.skip("needs the project's venv (make venv) and make")
    pwned = tmp_path / "pwned"
    data = tmp_path / name.format(pwned=pwned)
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "report", f"DATA={data}",
                        f"ASSETS={data}/assets.json"], capture_output=True, text=True, timeout=300)
    assert not pwned.exists(), "a path ran as a command"
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert r.returncode != 0 and errors == [f"error: {data}: data folder not found"], r.stderr[-2000:]


# -- configs read strictly and explained --------------------------------------------------------------


@pytest.mark.parametrize("text, needles", [
    ('[train]\nbatch_size = "32"\n', ["[train]", "batch_size expects an integer, got a string ('32')"]),
    ("\ufeff[train]\nlr = 1e-3\n", ["byte-order mark (BOM)"]),
    ('[captioner]\npeft = "lora"\nadapter_dim = 8\n', ["adapter_dim is a setting of peft adapter", "peft = 'lora'"]),
    ('[captioner]\npeft = "ia3"\nlora_r = 4\nvirtual_tokens = 5\n', ["lora_r, virtual_tokens are settings"]),
    ("[captioner]\nlora_targets = []\n", ["lora_targets=[]", "at least 1 item"]),
    ('[captioner]\npeft = "adapter"\nadapter_targets = []\n', ["adapter_targets=[]"]),
    ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", ["nested too deeply"]),
])
def test_train_refuses_a_config_with_one_line_naming_the_file(world, tmp_path, text, needles):
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(text.encode("utf-8"))
    r = run_cli("train", cfg, "--assets", world["assets"], "--data", world["data"] / "p2_data", "--out",
                tmp_path / "run")
    refused(r, str(cfg), *needles)
    assert not (tmp_path / "run").exists()


def test_an_override_of_another_peft_kind_is_refused_and_command_line_strings_still_convert():
    from hw3lib.core.errors import HW3Error
    from hw3lib.training.config import config_toml, load_config

    with pytest.raises(HW3Error, match="--adapter_dim: adapter_dim is a setting of peft adapter"):
        load_config(CONFIG, {"adapter_dim": "8"})
    cap, tr = load_config(CONFIG, {"batch_size": "16", "lora_r": "4", "hflip": "0.5"})
    assert (tr.batch_size, cap.lora_r, tr.hflip) == (16, 4, 0.5)
    cap, tr = load_config(None, {"peft": "adapter", "adapter_dim": "8"})
    assert "lora_r" not in config_toml(cap, tr) and "adapter_dim = 8" in config_toml(cap, tr)


def test_a_path_that_begins_with_a_dash_is_named(world, tmp_path):
    r = run_cli("zeroshot", "-data/val", world["data"] / "p1_data" / "id2label.json", tmp_path / "p.csv")
    refused(r, "-data/val was read as an option", "./-data/val")


def test_unlabelled_p1_names_are_counted_and_the_accuracy_says_over_what(world, tmp_path):
    p1 = shutil.copytree(world["data"] / "p1_data" / "val", tmp_path / "p1")
    n = len(list(p1.iterdir()))
    for name in ("cat.png", "dog.png"):
        shutil.copy(next(p1.glob("0_*.png")), p1 / name)
    r = run_cli("zeroshot", p1, world["data"] / "p1_data" / "id2label.json", tmp_path / "p.csv", "--assets",
                world["assets"])
    assert r.returncode == 0, r.stderr
    warns = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warns) == 1 and f"2 of {n + 2} images are not named" in warns[0] and "cat.png, dog.png" in warns[0]
    assert f"over the {n} of {n + 2} images named" in r.stdout


def test_links_that_loop_are_named(tmp_path):
    from hw3lib.core.images import list_images

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    with pytest.warns(UserWarning, match=r"skipped 2 link\(s\) that loop: a.png, b.png"):
        assert list_images(tmp_path) == [tmp_path / "ok.png"]


def test_a_decoder_of_another_vocabulary_is_named(world, tmp_path):
    from dataclasses import replace

    from hw3lib.models.decoder_file import load_decoder, save_decoder
    from hw3lib.models.gpt2 import GPT2

    m = world["manifest"]
    cfg = load_decoder(m.decoder.weights, n_head=m.decoder.n_head).config
    other = tmp_path / "other_vocab.bin"
    save_decoder(GPT2(replace(cfg, vocab_size=cfg.vocab_size + 7)), other)
    r = run_cli("caption", world["val"], tmp_path / "p.json", other, "--assets", world["assets"], "--untrained")
    refused(r, f"{other}: decoder with a vocabulary of {cfg.vocab_size + 7} tokens", f"has {cfg.vocab_size}")


def test_deeply_nested_boxes_are_named(world, tmp_path):
    data = shutil.copytree(world["data"], tmp_path / "hw3_data")
    (data / "p2_data" / "boxes.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = run_cli("train", CONFIG, "--assets", world["assets"], "--data", data / "p2_data", "--out", tmp_path / "run")
    refused(r, f"{data / 'p2_data' / 'boxes.json'}: JSON nested too deeply to read")


# -- the report as a transaction ----------------------------------------------------------------------


NOTEBOOK = """\
# ---
# jupyter:
#   kernelspec:
#     display_name: Python (hw3lib)
#     language: python
#     name: hw3lib
# ---

# %% tags=["parameters"]
data_dir = ""
assets = ""
device = ""
figures_dir = ""
checkpoint = ""
runs_dir = ""
run_group = ""
configs_dir = ""
reference = ""
variants = []

# %%
from pathlib import Path
figures = Path(figures_dir)
{body}
"""


def fake_project(root: Path, p2_body: str) -> Path:
    """A checkout whose three notebooks write a figure each (P2 also its summary, copied from the real one)."""
    (root / "configs" / "demo").mkdir(parents=True)
    (root / "notebooks").mkdir()
    table = json.loads((ROOT / "figures" / "p2_summary.json").read_text())
    bodies = {"p1_prompt_analysis": '(figures / "p1_new.png").write_text("p1 new")',
              "p2_peft_captioning": f'(figures / "p2_new.png").write_text("p2 new")\n'
                                    f'(figures / "p2_summary.json").write_text({json.dumps(json.dumps(table))})\n'
                                    f"{p2_body}",
              "p3_attention_visualization": '(figures / "p3_new.png").write_text("p3 new")'}
    for name, body in bodies.items():
        (root / "notebooks" / f"{name}.py").write_text(NOTEBOOK.format(body=body))
    return root


def report(project, world, **extra):
    return subprocess.Popen(report_args(project, world), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=project, env=dict(os.environ, PYTHONPATH=str(ROOT)), **extra)


def report_args(project, world) -> list[str]:
    return [sys.executable, "-m", "hw3lib.app.report", "--data", str(world["data"]), "--assets", str(world["assets"]),
            "--project", str(project), "--runs", str(project / "runs"), "--figures", str(project / "figures"),
            "--html", str(project / "build" / "report")]


def old_report(project: Path) -> dict:
    figures, html = project / "figures", project / "build" / "report"
    figures.mkdir()
    html.mkdir(parents=True)
    (figures / "p1_old.png").write_text("from the last run")
    (figures / "summary.md").write_text("# the last run\n")
    (figures / "summary.json").write_text('{"files": ["p1_old.png", "summary.md", "summary.json"]}')
    (figures / "my_notes.txt").write_text("the user's own file")
    (html / "index.html").write_text("the last run's page")
    return fingerprint(figures, html)


@pytest.mark.slow
def test_a_failed_report_leaves_the_previous_one_untouched_and_a_whole_one_replaces_it(world, tmp_path):
    project = fake_project(tmp_path / "broken", 'raise RuntimeError("P2 broke")')
    before = old_report(project)
    out, err = report(project, world).communicate(timeout=300)
    assert "error: p2_peft_captioning: cell" in err and "P2 broke" in err
    assert fingerprint(project / "figures", project / "build" / "report") == before  # byte-identical
    assert not [p for p in [*project.iterdir(), *(project / "figures").iterdir()]
                if p.name.endswith((".partial", ".old")) or p.name == ".hw3-staged"]

    project = fake_project(tmp_path / "fine", "")
    old_report(project)
    p = report(project, world)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    names = sorted(f.name for f in (project / "figures").iterdir() if not f.name.startswith("."))
    assert names == ["my_notes.txt", "p1_new.png", "p2_new.png", "p2_summary.json", "p3_new.png", "summary.json",
                     "summary.md"]  # the last run's p1_old.png is gone; the user's file stays
    index = (project / "build" / "report" / "index.html").read_text()
    assert 'href="../../figures/p2_new.png"' in index  # links to the figures where they now are
    assert json.loads((project / "runs" / "demo" / "INPUTS.json").read_text())["train.json"]


@pytest.mark.slow
def test_an_interrupted_report_ends_with_one_line_and_status_130(world, tmp_path):
    import signal
    import time

    project = fake_project(tmp_path / "slow", '(figures / "p2_started").write_text("")\nimport time\ntime.sleep(120)')
    before = old_report(project)
    p = report(project, world, start_new_session=True)
    t0 = time.time()
    while not (project / "figures" / ".hw3-staged" / "p2_started").exists():
        assert p.poll() is None and time.time() - t0 < 240, p.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[IPKernelApp]")] == [
        "interrupted: figures/ and the HTML report are as they were before this run"], err[-3000:]
    assert "Traceback" not in out
    assert fingerprint(project / "figures", project / "build" / "report") == before


def test_runs_of_another_world_are_not_reused(world, tmp_path, capsys):
    from hw3lib.app.report import own_runs

    runs = tmp_path / "runs"
    (runs / "demo" / "lora16").mkdir(parents=True)
    (runs / "demo" / "lora16" / "config.json").write_text(json.dumps({"inputs": {"train.json": "another world"}}))
    (runs / "worlds" / "demo-drawn").mkdir(parents=True)
    own_runs(runs, "demo", world["data"], str(world["assets"]))
    assert "runs of other inputs" in capsys.readouterr().out
    assert sorted(p.name for p in (runs / "demo").iterdir()) == ["INPUTS.json"]
    assert not (runs / "worlds" / "demo-drawn").exists()
    (runs / "demo" / "lora16").mkdir()
    own_runs(runs, "demo", world["data"], str(world["assets"]))  # its own: kept
    assert (runs / "demo" / "lora16").is_dir()


def test_the_drawn_order_world_of_another_world_is_written_anew(small_world, tmp_path):
    from hw3lib.captioning.study import caption_order_world
    from hw3lib.demo.world import DemoWorld, write_demo_world

    other = write_demo_world(tmp_path / "drawn", seed=8, size="small", progress=False, caption_order="drawn")
    world = DemoWorld.load(small_world)
    out = caption_order_world(world, other, "drawn")
    assert (out / "p2_data" / "boxes.json").read_bytes() == (small_world / "p2_data" / "boxes.json").read_bytes()
    assert DemoWorld.load(out).caption_order == "drawn" and DemoWorld.load(out).seed == world.seed
