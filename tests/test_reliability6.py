"""Reliability VI (#50): a report that owns only what it writes, nothing left running after kill -9, cache
entries that prove their content, the same bytes for the same run, and inputs read strictly. Each test is
one case of the issue's list (its number in the comment above it)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from .conftest import ROOT, private_copies, run_cli
from .test_reliability5 import fake_project, full_disk, report, report_args  # noqa: F401 - full_disk: a fixture
from .test_reliability_cli import refused


@pytest.fixture(scope="module")
def world(small_world, small_models, small_run, tmp_path_factory):
    return private_copies(small_world, small_models, small_run, tmp_path_factory.mktemp("rel6"))


def _pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].split()[0] != "Z":  # a zombie has ended
                    alive.append(pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return alive


def _wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    t0 = time.time()
    while _pids_alive(pids) and time.time() - t0 < timeout:
        time.sleep(0.2)
    return _pids_alive(pids)


# -- 1, 2, 3: the report owns only what it writes; figures/ may be a link, the HTML folder a mount point -------


def _user_files(figures: Path, elsewhere: Path) -> None:
    (figures / "drafts").mkdir()
    (figures / "drafts" / "plan.md").write_text("the user's plan")
    (figures / "p1_my_notes.txt").write_text("named like a generated file, but the user's")
    (elsewhere / "target.json").write_text('{"the user": "link target"}')
    os.symlink(elsewhere / "target.json", figures / "link.json")
    (figures / "p1_old.png").write_text("the last report's figure")
    (figures / "summary.json").write_text(json.dumps({"files": ["p1_old.png", "summary.md", "summary.json"]}))


@pytest.mark.slow
def test_a_report_replaces_its_own_files_only_through_a_linked_figures_folder_and_a_mounted_html_folder(
        world, tmp_path, full_disk):  # noqa: F811
    project = fake_project(tmp_path / "proj", "")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "figs").mkdir(parents=True)
    os.symlink(elsewhere / "figs", project / "figures")  # 2: figures/ is a link to a folder elsewhere
    _user_files(project / "figures", elsewhere)
    html = project / "build" / "report"
    html.mkdir(parents=True)
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None
    if mounted:  # 3: the HTML folder is a mount point (a tmpfs), which no rename can replace
        subprocess.run(["umount", "-l", str(html)], check=False, capture_output=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(html)], capture_output=True)
        mounted = r.returncode == 0
    try:
        (html / "mine.txt").write_text("the user's file beside the report")
        p = report(project, world)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        figures = project / "figures"
        assert figures.is_symlink() and figures.resolve() == (elsewhere / "figs").resolve()  # still the link
        assert (figures / "drafts" / "plan.md").read_text() == "the user's plan"  # 1: subfolder kept
        assert (figures / "p1_my_notes.txt").is_file()  # 1: a user's file named like a generated one
        assert (figures / "link.json").is_symlink() and json.loads((figures / "link.json").read_text())  # 1
        assert not (figures / "p1_old.png").exists()  # the last report's own figure is gone
        for name in ("p1_new.png", "p2_new.png", "p3_new.png", "summary.md", "summary.json"):
            assert (figures / name).is_file(), name
        assert json.loads((figures / "summary.json").read_text())["files"]
        assert (html / "index.html").is_file() and (html / "mine.txt").is_file()
        leftovers = [p.name for d in (figures, html, project) for p in d.iterdir()
                     if p.name.endswith((".partial", ".old")) or p.name in (".hw3-staged", ".hw3-commit.json")]
        assert leftovers == []
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(html)], check=False)
    if not mounted:
        pytest.skip("the mount-point half needs root and mount (the link and user-file halves passed)")


def test_what_the_whole_folder_swap_left_behind_no_longer_blocks_a_report(tmp_path):
    # 2 (second half): a `.figures.partial` link left by the old swap failed every later report
    from hw3lib.app.report import forget_swaps

    figures, elsewhere = tmp_path / "figures", tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, figures)
    os.symlink(elsewhere, tmp_path / ".figures.partial")
    forget_swaps(figures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "figures"] and figures.is_symlink()
    html = tmp_path / "report"
    (tmp_path / ".report.old").mkdir()
    (tmp_path / ".report.old" / "index.html").write_text("the last report")
    forget_swaps(html)  # a crash between the old swap's two renames: the old folder comes back
    assert (html / "index.html").read_text() == "the last report"


def test_a_commit_cut_between_the_html_and_the_figures_is_completed_by_the_next_run(tmp_path):
    # 4 (second half): a kill between the two folders' swaps left a new HTML report over old figures
    from hw3lib.core.files import JOURNAL, fault_hook, finish_commit, staged_files

    figures, html = tmp_path / "figures", tmp_path / "html"
    for d, name in ((figures, "p1.png"), (html, "index.html")):
        d.mkdir()
        (d / name).write_text("old")
    (figures / "notes.txt").write_text("the user's")

    def crash(point):
        if point == "commit:index.html":  # the HTML is in; the figures are not yet
            raise SystemExit("killed")

    with pytest.raises(SystemExit), fault_hook(crash), staged_files([figures, html]) as (sf, sh):
        (sf / "p1.png").write_text("new")
        (sh / "index.html").write_text("new")
    assert (figures / JOURNAL).is_file() and (html / "index.html").read_text() == "new"
    finish_commit(figures)  # what the next report does first
    assert (figures / "p1.png").read_text() == "new" and (html / "index.html").read_text() == "new"
    assert (figures / "notes.txt").read_text() == "the user's"
    assert not (figures / JOURNAL).exists() and not (figures / ".hw3-staged").exists()

    # before the journal: nothing moved, and the staged files are gone
    with pytest.raises(RuntimeError), staged_files([figures, html]) as (sf, sh):
        (sf / "p1.png").write_text("newer")
        raise RuntimeError("a notebook failed")
    assert (figures / "p1.png").read_text() == "new" and not (figures / ".hw3-staged").exists()


def test_a_second_commit_removes_only_what_the_first_wrote(tmp_path):
    from hw3lib.core.files import staged_files

    target = tmp_path / "figures"
    target.mkdir()
    (target / "p2_user.png").write_text("the user's")
    with staged_files([target]) as (stage,):
        (stage / "p2_a.png").write_text("a")
        (stage / "p2_b.png").write_text("b")
    with staged_files([target]) as (stage,):
        (stage / "p2_a.png").write_text("a2")
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == ["p2_a.png", "p2_user.png"]


# -- 4: nothing outlives the report --------------------------------------------------------------------------

P2_WORKERS = """\
import os, time
from hw3lib.core.distributed import worker_pool
pool = worker_pool(2, 1)
pids = sorted(set(pool.submit(os.getpid).result() for _ in range(8)))
pool.submit(time.sleep, 300)
(figures / "pids").write_text(" ".join(map(str, [os.getpid(), *pids])))
time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9 of the group", "SIGHUP"])
def test_no_kernel_or_worker_outlives_a_killed_report(world, tmp_path, how):
    project = fake_project(tmp_path / "proj", P2_WORKERS)
    p = report(project, world, start_new_session=True)
    pids_file = project / "figures" / ".hw3-staged" / "pids"
    t0 = time.time()
    while not pids_file.is_file() or len(pids_file.read_text().split()) < 2:
        assert p.poll() is None and time.time() - t0 < 240, p.communicate()[1][-3000:]
        time.sleep(0.2)
    kernel_and_workers = [int(x) for x in pids_file.read_text().split()]
    assert len(_pids_alive(kernel_and_workers)) == len(kernel_and_workers)
    if how == "SIGHUP":
        os.kill(p.pid, signal.SIGHUP)  # the terminal closed: only the report hears it
    else:
        os.killpg(p.pid, signal.SIGKILL)  # the report's group; the kernel runs in a session of its own
    p.communicate(timeout=60)
    assert _wait_gone(kernel_and_workers) == [], f"still running after {how}"


def test_a_pool_worker_ends_when_its_parent_is_killed(tmp_path):
    code = ("import os, sys, time\nfrom hw3lib.core.distributed import worker_pool\n"
            "pool = worker_pool(1, 1)\npid = pool.submit(os.getpid).result()\n"
            "pool.submit(time.sleep, 300)\nprint(pid, flush=True)\ntime.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
    worker = int(parent.stdout.readline())
    assert _pids_alive([worker]) == [worker]
    os.kill(parent.pid, signal.SIGKILL)  # the parent alone: its worker is orphaned, not killed with it
    parent.wait()
    parent.stdout.close()
    assert _wait_gone([worker], 10) == []


# -- 5: only the project's own demo report rewrites the numbers in README and docs ---------------------------


def test_only_the_project_demo_report_rewrites_the_documentation(tmp_path):
    from hw3lib.app.report import project_demo

    demo = ROOT / "build" / "demo"
    args = SimpleNamespace(data=demo / "hw3_data", assets=str(demo / "models" / "assets.json"), figures=None)
    assert project_demo(ROOT, args)
    assert not project_demo(ROOT, SimpleNamespace(**(vars(args) | {"data": tmp_path / "myworld"})))
    assert not project_demo(ROOT, SimpleNamespace(**(vars(args) | {"assets": str(tmp_path / "assets.json")})))
    assert not project_demo(ROOT, SimpleNamespace(**(vars(args) | {"assets": "real"})))
    assert not project_demo(ROOT, SimpleNamespace(**(vars(args) | {"figures": tmp_path / "figs"})))


# -- 6: a venv whose creation was cut short is repaired ------------------------------------------------------


@pytest.mark.slow
def test_a_venv_without_pip_is_repaired(tmp_path):
    from .conftest import load_script

    venv = tmp_path / "venv"
    r = subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a venv here: {r.stderr.strip()[:200]}")
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import pip"], capture_output=True).returncode != 0  # the broken state
    if subprocess.run([python, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        pytest.skip("this Python has no ensurepip")
    assert load_script("tools/venv_install.py").ensure_pip(python)
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0


# -- 7, 9: feature-cache entries prove their content; the weights digest is kept beside the cache -------------


def _cache_with_two_entries(tmp_path):
    from hw3lib.training.feature_cache import FeatureCache

    imgs = []
    for i in range(2):
        imgs.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(imgs[-1])
    encode = lambda paths: torch.stack([torch.full((4, 6), float(p.stem[-1]) + 1.0) for p in paths])
    cache = FeatureCache(tmp_path / "cache", "fp", memory_bytes=0)
    cache.get(imgs, encode)
    return imgs, encode, [cache._file(cache.key(p)) for p in imgs]


@pytest.mark.parametrize("damage", ["zeroed in place", "another image's entry"])
def test_a_damaged_cache_entry_is_recomputed_with_a_warning_naming_it(tmp_path, damage):
    from safetensors.torch import load_file

    from hw3lib.training.feature_cache import FeatureCache

    imgs, encode, files = _cache_with_two_entries(tmp_path)
    if damage == "zeroed in place":  # the format intact, the data zeroed
        data = bytearray(files[0].read_bytes())
        data[-96:] = bytes(96)
        files[0].write_bytes(bytes(data))
        assert load_file(str(files[0]))["tokens"].abs().sum() == 0
    else:
        shutil.copy(files[1], files[0])
    cache = FeatureCache(tmp_path / "cache", "fp", memory_bytes=0)
    with pytest.warns(UserWarning, match=f"{files[0].name}: damaged feature-cache entry"):
        got = cache.get(imgs, encode)
    assert torch.equal(got[0], torch.full((4, 6), 1.0)) and torch.equal(got[1], torch.full((4, 6), 2.0))
    assert (cache.misses, cache.damaged) == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the entry was written again: sound now
        assert torch.equal(FeatureCache(tmp_path / "cache", "fp", memory_bytes=0).get(imgs, encode)[0], got[0])


def test_the_weights_digest_is_written_beside_the_cache_after_an_earlier_hash(tmp_path):
    from hw3lib.training.feature_cache import weights_digest

    w, memo = tmp_path / "enc.safetensors", tmp_path / "cache" / "weights-digests.json"
    w.write_bytes(b"\3" * 4096)
    first = weights_digest(w)  # the run's input fingerprint hashes it first, with no memo
    assert weights_digest(w, memo) == first
    assert json.loads(memo.read_text())[str(w.resolve())][1] == first


# -- 8: cached demo models are checked against their recorded sizes and digests --------------------------------


def test_cached_demo_models_cut_short_are_built_again(small_world, small_models, tmp_path, monkeypatch, capsys):
    from hw3lib.pretraining import demo_models

    models = shutil.copytree(Path(small_models).parent, tmp_path / "models")
    assert demo_models.check_contents(models) is None
    built = []
    monkeypatch.setattr(demo_models, "_build", lambda p2, world, out, *a: built.append(out) or
                        shutil.copytree(models, out, dirs_exist_ok=True))
    demo_models.build_demo_models(small_world, models, size="small", seed=0)
    assert built == [] and "up to date" in capsys.readouterr().out
    weights = models / "clip_counting" / "open_clip_model.safetensors"
    assert weights.is_file()
    keep = weights.read_bytes()
    weights.write_bytes(keep[: len(keep) // 2])
    assert demo_models.check_contents(models) == \
        f"clip_counting/open_clip_model.safetensors has {len(keep) // 2} bytes, recorded {len(keep)}"
    weights.write_bytes(keep[:-1] + bytes([keep[-1] ^ 1]))  # one bit, same size
    assert "differs from its recorded sha256" in demo_models.check_contents(models)


# -- 10: the same settings give the same bytes ----------------------------------------------------------------


def test_a_checkpoint_is_the_same_bytes_whatever_the_process(tmp_path):
    code = ("import sys, torch\nfrom hw3lib.core.weights import save_safetensors\n"
            "save_safetensors({'w': torch.ones(3)}, sys.argv[1], {k: k * 3 for k in 'abcdefghijklmnop'})\n")
    for i in range(3):  # every process hashes the metadata's keys with another seed
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="random"))
    data = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(3)}
    assert len(data) == 1


@pytest.mark.slow
def test_two_runs_of_the_same_settings_write_the_same_bytes(small_models, small_world, tmp_path):
    settings = {"max_steps": "6", "select_images": "4", "lora_r": "4", "device": "cpu", "val_every": "3",
                "attention_supervision": "0"}
    for i in range(2):
        subprocess.run([sys.executable, "-m", "hw3lib", "train", str(ROOT / "configs" / "demo" / "lora16.toml"),
                        "--assets", str(small_models), "--data", str(small_world / "p2_data"), "--out",
                        str(tmp_path / f"run{i}"), *[f"--{k}={v}" for k, v in settings.items()]],
                       check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="random"))
    a, b = (sorted(p.name for p in (tmp_path / f"run{i}").iterdir()) for i in range(2))
    assert a == b and "checkpoint-best.safetensors" in a and "resume.pt" in a
    differ = [n for n in a if n not in (".lock", "timing.jsonl")
              and (tmp_path / "run0" / n).read_bytes() != (tmp_path / "run1" / n).read_bytes()]
    assert differ == []


# -- 11, 12: duplicate keys, one name for two ids, impossible boxes ------------------------------------------


@pytest.mark.parametrize("reader, text", [
    ("predictions", '{"a": "one caption", "a": "another"}'),
    ("id2label", '{"0": "cat", "1": "dog", "0": "bird"}'),
    ("boxes", '{"val/a.png": [], "val/a.png": []}'),
    ("annotations", '{"images": [], "annotations": [], "images": []}'),
])
def test_a_key_given_twice_is_refused_with_the_key_and_file(tmp_path, reader, text):
    from hw3lib.core.data import read_caption_file, read_id2label, read_predictions
    from hw3lib.core.errors import HW3Error
    from hw3lib.demo.world import read_boxes

    f = tmp_path / f"{reader}.json"
    f.write_text(text)
    read = {"predictions": read_predictions, "id2label": read_id2label, "boxes": read_boxes,
            "annotations": read_caption_file}[reader]
    key = json.loads("[" + text.split(":")[0].lstrip("{") + "]")[0]
    with pytest.raises(HW3Error, match=f"^{f}: key '{key}' is given twice"):
        read(f)


def test_two_class_ids_with_one_name_are_refused(tmp_path):
    from hw3lib.core.data import read_id2label
    from hw3lib.core.errors import HW3Error

    f = tmp_path / "id2label.json"
    f.write_text('{"0": "cat", "1": "dog", "2": "cat "}')
    with pytest.raises(HW3Error, match=f"{f}: class ids 0 and 2 have one name 'cat'"):
        read_id2label(f)


@pytest.mark.parametrize("box, needle", [([30, 10, 20, 40], "empty or inverted"), ([10, 10, 10, 40], "empty"),
                                         ([10, 40, 30, 20], "inverted"), ([80, 10, 120, 40], "outside the image"),
                                         ([-4, 10, 20, 40], "outside the image")])
def test_impossible_boxes_are_refused_with_the_image_named(small_world, tmp_path, box, needle):
    from hw3lib.core.errors import HW3Error
    from hw3lib.demo.world import DemoWorld

    data = shutil.copytree(small_world, tmp_path / "hw3_data")
    boxes_file = data / "p2_data" / "boxes.json"
    boxes = json.loads(boxes_file.read_text())
    name = sorted(boxes)[0]
    boxes[name][0]["box"] = box
    boxes_file.write_text(json.dumps(boxes))
    with pytest.raises(HW3Error, match=rf"boxes.json: '{name}'\[0\]: box .*{needle}"):
        DemoWorld.load(data)


# -- 13, 14, 15: images in subfolders, truncated images, unreadable weights -----------------------------------


def test_images_in_subfolders_are_counted_in_a_warning(tmp_path):
    from hw3lib.core.images import list_images

    Image.new("RGB", (8, 8)).save(tmp_path / "0_a.png")
    (tmp_path / "more" / "deeper").mkdir(parents=True)
    for name in ("more/0_b.png", "more/deeper/1_c.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "more" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"2 image\(s\) in subfolders are not read .*more/0_b.png, more/deeper/1_c.jpg"):
        assert list_images(tmp_path) == [tmp_path / "0_a.png"]


def _truncated(path: Path, fmt: str) -> Path:
    import io

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format=fmt)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_truncated_image_is_named_before_any_work(tmp_path, fmt):
    from hw3lib.core.errors import HW3Error
    from hw3lib.core.images import check_images

    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    bad = _truncated(tmp_path / f"bad.{fmt.lower()}", fmt)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(HW3Error, match=rf"^{bad}: corrupt or truncated image .*\(and 1 more unreadable image"):
        check_images([good, bad, empty])
    with pytest.warns(UserWarning, match="skipped 2 bad image"):
        assert check_images([good, bad, empty], skip_bad=True) == [good]


def test_zeroshot_skip_bad_skips_a_truncated_image(world, tmp_path):
    p1 = shutil.copytree(world["data"] / "p1_data" / "val", tmp_path / "p1")
    n = len(list(p1.iterdir()))
    victim = sorted(p1.iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    args = [p1, world["data"] / "p1_data" / "id2label.json", tmp_path / "p.csv", "--assets", world["assets"]]
    refused(run_cli("zeroshot", *args), str(victim), "corrupt or truncated image")
    assert not (tmp_path / "p.csv").exists()
    r = run_cli("zeroshot", *args, "--skip-bad")
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == n  # a header and the n - 1 readable images


@pytest.mark.parametrize("content", [b"\x13garbage " * 64, b"\x80\x04garbage" * 64])
def test_an_unreadable_decoder_file_gets_a_short_line_of_our_own(world, tmp_path, content):
    bad = tmp_path / "decoder_model.bin"
    bad.write_bytes(content)
    r = run_cli("caption", world["val"], tmp_path / "p.json", bad, "--assets", world["assets"], "--untrained")
    line = refused(r, str(bad), "not a readable weights file")
    assert "weights_only" not in line and "PyTorch" not in line and len(line) < len(str(bad)) + 160


# -- 16, 17: what a refusal says ---------------------------------------------------------------------------------


def test_a_resume_refusal_names_each_setting_that_changed():
    from dataclasses import asdict

    from hw3lib.models.captioner import CaptionerConfig
    from hw3lib.training.config import TrainConfig
    from hw3lib.training.runfolder import config_changes

    cap, train = CaptionerConfig(), TrainConfig(log_every=10)
    recorded = {"captioner": asdict(cap), "train": asdict(train)}
    key = json.dumps(recorded)
    assert config_changes(key, cap, train) is None
    assert config_changes(key, cap, TrainConfig(log_every=25, cache_dir="/tmp/c")) == (
        'changed: cache_dir "" -> "/tmp/c"; log_every 10 -> 25')
    assert config_changes(key, CaptionerConfig(lora_dropout=0.1), TrainConfig(log_every=10, lr=1e-4)) == (
        "changed: lora_dropout 0.0 -> 0.1; lr 3e-05 -> 0.0001")
    del recorded["train"]["patience"]  # a run started before the setting existed: it reads as its default
    assert config_changes(json.dumps(recorded), cap, train) is None
    assert config_changes("not json", cap, train) == "the resume state records no readable configuration"


@pytest.mark.slow
def test_train_resumed_with_another_setting_names_it(world, tmp_path):
    run = shutil.copytree(world["run"], tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())["train"]
    r = run_cli("train", ROOT / "configs" / "demo" / "lora16.toml", "--assets", world["assets"], "--data",
                world["data"] / "p2_data", "--out", run, "--max_steps=30", "--select_images=4", "--lora_r=4",
                "--val_every=0", "--attention_supervision=0", f"--log_every={cfg['log_every'] + 5}")
    refused(r, "another configuration", f"log_every {cfg['log_every']} -> {cfg['log_every'] + 5}")


def test_a_relative_data_path_says_which_folder_it_was_read_against(tmp_path):
    (tmp_path / "myworld").mkdir()  # where the user is; the report runs elsewhere (make -C CHECKOUT)
    elsewhere = tmp_path / "checkout"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "hw3lib.app.report", "--data", "myworld", "--assets", "x.json",
                        "--project", str(ROOT)], capture_output=True, text=True, cwd=elsewhere,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: myworld: data folder not found (a relative path, read against {elsewhere})"
