"""Reliability IV (#31): inputs checked before work, empty and enormous captions, checkpoints whose tensors
lie, names that would break line output. Each bad case exits 2 with one `error:` line naming the file and
leaves every input byte-identical (sha256)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .conftest import lock_held_elsewhere, private_copies, run_cli
from .test_reliability_cli import check_refused


@pytest.fixture(scope="module")
def world(small_world, small_models, small_run, tmp_path_factory):
    return private_copies(small_world, small_models, small_run, tmp_path_factory.mktemp("rel4"))


def images_with_a_bad_one(world, tmp_path, name="zz_broken.jpg", content=b""):
    """The val images plus one bad file, sorted last, so that it is met only after every good one."""
    folder = shutil.copytree(world["val"], tmp_path / "images")
    (folder / name).write_bytes(content)
    return folder


# -- errors before work: every image header is read before a model is loaded ---------------------------


def test_caption_names_a_zero_byte_image_before_any_model(world, tmp_path):
    folder = images_with_a_bad_one(world, tmp_path)
    missing = tmp_path / "no_such_decoder.bin"  # were the models loaded first, this would be the error
    check_refused(["caption", folder, tmp_path / "p.json", missing, "--assets", world["assets"], "--untrained"],
                  [folder], "zz_broken.jpg: empty file (0 bytes)")
    assert not (tmp_path / "p.json").exists()


def test_zeroshot_names_a_truncated_image_before_clip_loads(world, tmp_path):
    p1 = shutil.copytree(world["data"] / "p1_data" / "val", tmp_path / "p1")
    (p1 / "9_99999.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 7)  # a PNG signature and nothing else
    bad_assets = tmp_path / "assets.json"
    bad_assets.write_text(json.dumps({"clip": {"model": "hw3-no-such-clip", "pretrained": "nope.bin"}}))
    check_refused(["zeroshot", p1, world["data"] / "p1_data" / "id2label.json", tmp_path / "pred.csv",
                   "--assets", bad_assets], [p1], "9_99999.png")


def test_attention_and_evaluate_check_headers_first(world, tmp_path):
    folder = images_with_a_bad_one(world, tmp_path, "zz_text.jpg", b"this is not an image")
    check_refused(["attention", folder, "--checkpoint", tmp_path / "no_run", "--assets", world["assets"],
                   "--out", tmp_path / "maps"], [folder], "zz_text.jpg: not an image file")
    preds = {p.stem: "a red circle" for p in folder.iterdir()}
    refs = json.loads((world["data"] / "p2_data" / "val.json").read_text())
    refs["images"].append({"id": 10**9, "file_name": "zz_text.jpg"})
    refs["annotations"].append({"id": 10**9, "image_id": 10**9, "caption": "a shape"})
    (tmp_path / "val.json").write_text(json.dumps(refs))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    bad_assets = tmp_path / "clip_missing.json"
    bad_assets.write_text(json.dumps({"clip": {"model": "hw3-no-such-clip", "pretrained": "nope.bin"}}))
    check_refused(["evaluate", tmp_path / "pred.json", "--images", folder, "--annotations", tmp_path / "val.json",
                   "--assets", bad_assets, "--tokenizer", "python"], [folder, tmp_path / "pred.json"],
                  "zz_text.jpg: not an image file")


# -- names in line-based output --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tab\there.png", "new\nline.png", "carriage\rreturn.png"])
def test_caption_to_stdout_refuses_a_name_that_would_split_its_line(world, tmp_path, name):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "fine.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(folder / name)
    check_refused(["caption", folder, "-", world["decoder"], "--assets", world["assets"], "--untrained"], [folder],
                  "a tab or line break in the file name", ascii(str(folder / name)))


def test_caption_to_stdout_writes_one_line_per_image(world, tmp_path):
    r = run_cli("caption", world["val"], "-", world["decoder"], "--assets", world["assets"], "--untrained",
                "--max-len", "4")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(list(world["val"].iterdir()))
    assert all(len(line.split("\t")) == 2 for line in lines)


# -- checkpoints whose tensors lie -----------------------------------------------------------------------


@pytest.mark.parametrize("change, needle", [
    (lambda t: t.to(torch.int32), "holds torch.int32 values; captioner weights are floating point"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "holds non-finite values (NaN or inf)"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "holds non-finite values (NaN or inf)"),
])
def test_a_checkpoint_with_bad_tensors_is_refused(world, tmp_path, change, needle):
    from safetensors import safe_open

    src = world["run"] / "checkpoint-best.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    sd = load_file(str(src))
    first = sorted(sd)[0]
    sd[first] = change(sd[first]).contiguous()
    bad = tmp_path / "ck.safetensors"
    save_file(sd, str(bad), metadata=meta)
    check_refused(["caption", world["val"], tmp_path / "p.json", world["decoder"], "--assets", world["assets"],
                   "--checkpoint", bad], [bad, world["val"]], str(bad), needle)
    assert not (tmp_path / "p.json").exists()


# -- a leftover torchrun environment -----------------------------------------------------------------------


def test_a_leftover_torchrun_environment_says_what_it_waits_for_and_gives_up(world, tmp_path):
    """RANK / WORLD_SIZE / MASTER_* left in the shell by an earlier torchrun: `hw3 train` says it waits for
    the other processes, and after --dist_timeout seconds ends with one line naming the variables."""
    import os
    import socket
    import subprocess
    import sys

    from .conftest import ROOT
    from .test_reliability_cli import refused

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    r = subprocess.run([sys.executable, "-m", "hw3lib", "train", ROOT / "configs" / "demo" / "lora16.toml", "--data",
                        world["data"] / "p2_data", "--out", tmp_path / "run", "--assets", world["assets"],
                        "--dist_timeout=2", "--max_steps=1", "--device=cpu"], env=env, capture_output=True, text=True,
                       timeout=300)
    refused(r, "2 processes did not meet within 2 s", "RANK=0", "WORLD_SIZE=2", f"MASTER_PORT={port}", "unset RANK")
    assert "distributed run: waiting up to 2 s for 2 processes" in r.stdout


# -- the report escapes what it shows ------------------------------------------------------------------------

EVIL_NAME = '"><img src=x onerror="document.title=\'pwned\';window.pwned=1">.jpg'
EVIL_CAPTION = ("<img src=x onerror=\"window.pwned=1\"> # heading | cell ![remote](http://127.0.0.1:9/x.png) "
                "<script>window.pwned=1</script> *bold*")


def hostile_report(tmp_path):
    """index.html of a report whose P3 extremes hold a hostile image name and caption, and whose prompt
    table holds a hostile template."""
    from hw3lib.app.report import export_html
    from hw3lib.app.summary import p3_section
    from hw3lib.core.results import Extreme, P3Summary

    figures = tmp_path / "figures"
    figures.mkdir()
    p3 = P3Summary({EVIL_NAME: EVIL_CAPTION}, {"top-1": Extreme(EVIL_NAME, 1.0, EVIL_CAPTION)})
    (figures / "summary.md").write_text("# hw3lib report summary\n\n" + "\n".join(p3_section(p3)) + "\n")
    return export_html([], figures, tmp_path / "html", ["summary.md"])


def test_the_report_page_shows_hostile_strings_as_text(tmp_path):
    from html.parser import HTMLParser

    page = hostile_report(tmp_path)
    tags, text = [], []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))

        def handle_data(self, data):
            text.append(data)

    Collect().feed(page.read_text())
    assert not [t for t, _ in tags if t == "script"]
    assert not [a for _, a in tags if any(k.startswith("on") for k in a)]
    assert not [a for t, a in tags if t == "img" and "127.0.0.1" in a.get("src", "")]
    shown = " ".join("".join(text).split())
    assert " ".join(EVIL_CAPTION.split()) in shown and EVIL_NAME in shown  # exactly what the model wrote


def test_the_report_page_runs_nothing_in_a_browser(tmp_path):
    from .conftest import headless_chrome

    page = hostile_report(tmp_path)
    driver = headless_chrome(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        assert driver.execute_script("return window.pwned === undefined") and driver.title == "hw3lib report"
        assert driver.execute_script("return document.querySelectorAll('script, img[src^=\"http\"]').length") == 0
        assert "<script>window.pwned=1</script>" in driver.find_element("tag name", "body").text
    finally:
        driver.quit()


# -- two writers of one output folder -------------------------------------------------------------------------


def test_two_demo_data_at_once_leave_one_complete_world(tmp_path):
    """Two `hw3 demo-data OUT` started together: one writes the world, the other refuses with one line;
    the world equals one written alone, byte for byte."""
    import os
    import subprocess
    import sys

    from hw3lib.demo.world import write_demo_world

    from .test_demo import tree_digest

    out = tmp_path / "world"
    env = dict(os.environ, TQDM_DISABLE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "hw3lib", "demo-data", str(out), "--size", "small", "--seed", "7"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [rc for rc, _ in results] == [0, 2], results
    lines = [ln for ln in results[1][1].splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0]
    reference = write_demo_world(tmp_path / "alone", seed=7, size="small", progress=False)
    assert tree_digest(out) == tree_digest(reference)
    assert not list(tmp_path.glob(".*.partial"))


def test_an_output_folder_held_by_another_process_is_refused_naming_it(tmp_path):
    import time

    from hw3lib.core.errors import HW3Error
    from hw3lib.core.files import output_lock

    out = tmp_path / "figures"
    with lock_held_elsewhere("output_lock", out, "x") as holder:
        with pytest.raises(HW3Error, match=rf"being written by another hw3 attention \(pid {holder.pid}\)"):
            with output_lock(out, "hw3 attention"):
                pass
    time.sleep(0.1)
    with output_lock(out, "hw3 attention"):  # the kernel dropped the dead holder's lock
        pass


def test_an_interrupted_demo_data_leaves_no_partial_folder(tmp_path, monkeypatch):
    from hw3lib.demo import world

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(world, "_write_p2_split", interrupt)
    with pytest.raises(KeyboardInterrupt):
        world.write_demo_world(tmp_path / "w", seed=1, size="small", progress=False)
    assert not (tmp_path / "w").exists() and not (tmp_path / ".w.partial").exists()


# -- memory that grows with the batch, not with the input ---------------------------------------------------

PEAK_RSS = ("import resource, sys\nfrom hw3lib.app.cli import main\nrc = main(sys.argv[1:])\n"
            "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")


def peak_rss_mb(*args) -> float:
    """`hw3 ARGS` in a new process; its peak resident memory in MB."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, args)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.split("peak_rss_kb")[-1]) / 1024


def p1_folder(tmp_path, n: int, side: int):
    folder = tmp_path / f"p1_{n}"
    folder.mkdir()
    for i in range(n):  # flat colours: small files, large once decoded (side * side * 3 bytes each)
        Image.new("RGB", (side, side), (i % 256, 80, 160)).save(folder / f"{i % 10}_{i}.png")
    return folder


def test_zeroshot_memory_does_not_grow_with_the_number_of_images(world, tmp_path):
    """200 images of 640x640 (245 MB decoded) against 20: the peak grows by far less than the images."""
    id2label = world["data"] / "p1_data" / "id2label.json"
    small, large = (peak_rss_mb("zeroshot", p1_folder(tmp_path, n, 640), id2label, tmp_path / f"{n}.csv",
                                "--assets", world["assets"], "--batch-size", "16") for n in (20, 200))
    assert large - small < 100, (small, large)


def test_clipscore_memory_does_not_grow_with_the_images_of_a_batch(world, tmp_path):
    """CLIPScore of 64 images of 1600x1200 (369 MB decoded) against 8: decoded one at a time."""
    peaks = []
    for n in (8, 64):
        folder = tmp_path / f"val_{n}"
        folder.mkdir()
        images, annotations = [], []
        for i in range(n):
            Image.new("RGB", (1600, 1200), (i * 3 % 256, 40, 90)).save(folder / f"{i}.png", compress_level=1)
            images.append({"id": i, "file_name": f"{i}.png"})
            annotations.append({"id": i, "image_id": i, "caption": "a red circle"})
        (tmp_path / f"val_{n}.json").write_text(json.dumps({"images": images, "annotations": annotations}))
        (tmp_path / f"pred_{n}.json").write_text(json.dumps({str(i): "a red circle" for i in range(n)}))
        peaks.append(peak_rss_mb("evaluate", tmp_path / f"pred_{n}.json", "--images", folder, "--annotations",
                                 tmp_path / f"val_{n}.json", "--assets", world["assets"], "--tokenizer", "python"))
    assert peaks[1] - peaks[0] < 150, peaks


# -- signals and damaged run folders ------------------------------------------------------------------------


def test_sigterm_during_the_java_tokenizer_leaves_no_process_and_no_captions(tmp_path):
    """`kill` (SIGTERM) while the PTB tokenizer runs: hw3 ends as on Ctrl-C, its Java child is killed and
    the temporary folder holding every caption is removed."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from hw3lib.metrics.captions import java_available

    if not java_available():
        pytest.skip("java not installed")
    n = 8000  # lines enough to keep Java busy for a moment (its start alone takes a good part of a second)
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(n)]
    annotations = [{"id": i, "image_id": i, "caption": f"a red circle number {i} beside a blue square"} for i in range(n)]
    (tmp_path / "val.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (tmp_path / "pred.json").write_text(json.dumps({str(i): f"a red circle {i}" for i in range(n)}))
    folder = tmp_path / "images"  # the images are not read without CLIP: empty files will do
    folder.mkdir()
    for i in range(n):
        (folder / f"{i}.jpg").touch()
    before = set(Path(tempfile.gettempdir()).glob("hw3-ptb-*"))
    proc = subprocess.Popen([sys.executable, "-m", "hw3lib", "evaluate", tmp_path / "pred.json", "--images", folder,
                             "--annotations", tmp_path / "val.json", "--no-clip", "--tokenizer", "ptb"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def java_children():
        r = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "PTBTokenizer"], capture_output=True, text=True)
        return r.stdout.split()

    deadline = time.time() + 120
    while not java_children() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    children = java_children()
    assert children, f"the Java tokenizer never started (or finished too fast to interrupt): {proc.stderr.read()}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    time.sleep(0.5)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert set(Path(tempfile.gettempdir()).glob("hw3-ptb-*")) <= before
    assert os.path.exists(tmp_path / "pred.json")


def test_a_damaged_log_line_is_one_line_naming_the_file(tmp_path):
    from hw3lib.captioning.runs import training_curves
    from hw3lib.core.errors import HW3Error

    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n')
    with pytest.raises(HW3Error, match=r"log.jsonl: line 2 is not JSON"):
        training_curves(tmp_path)


def test_feature_cache_entries_that_lie_are_recomputed(tmp_path):
    """Entries that are NaN, integer, of another shape, or not safetensors at all are recomputed, never used."""
    from safetensors.torch import save_file as save

    from hw3lib.training.feature_cache import FeatureCache

    images = []
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    calls = []

    def encode(paths):
        calls.append(len(paths))
        return torch.ones(len(paths), 3, 4)

    cache = FeatureCache(tmp_path / "cache", "enc")
    assert [tuple(t.shape) for t in cache.get(images, encode)] == [(3, 4)] * 5 and calls == [5]
    bad = {1: {"tokens": torch.full((3, 4), float("nan"))}, 2: {"tokens": torch.ones(3, 4, dtype=torch.int32)},
           3: {"tokens": torch.ones(7, 4)}}  # image 0's entry stays good: it shows the encoder's shape
    for i, tensors in bad.items():
        save(tensors, str(cache._file(cache.key(images[i]))))
    cache._file(cache.key(images[4])).write_bytes(b"not safetensors")
    again = FeatureCache(tmp_path / "cache", "enc")
    got = again.get(images, encode)
    assert calls == [5, 4] and all(torch.equal(t, torch.ones(3, 4)) for t in got)


def test_feature_cache_keeps_entries_in_memory_within_its_budget(tmp_path):
    """Entries read or written once are served from memory (the disk is not read again) up to the byte
    budget; past it, from disk."""
    from hw3lib.training.feature_cache import FeatureCache

    images = []
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")

    def encode(paths):
        return torch.arange(len(paths) * 12, dtype=torch.float).view(len(paths), 3, 4)

    entry = 3 * 4 * 4  # bytes of one (3, 4) float32 entry
    cache = FeatureCache(tmp_path / "cache", "enc", memory_bytes=2 * entry)
    first = cache.get(images, encode)
    for p in images:  # the disk copies go away: only the two remembered entries can still be served
        cache._file(cache.key(p)).unlink()
    calls = []
    again = cache.get(images, lambda paths: calls.append(len(paths)) or encode(paths))
    assert calls == [2]  # two from memory, two encoded again
    assert all(torch.equal(a, b) for a, b in zip(first[:2], again[:2], strict=True))
    assert cache._held == 2 * entry
