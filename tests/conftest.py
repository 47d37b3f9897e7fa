import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would flood the captured output
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Each xdist worker (and each notebook kernel or CLI it starts) computes on one thread: with torch's
    # default of one thread per core, two workers on two cores would run four spinning OpenMP threads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

# Tiers (timm's way): most tests run on tiny random models in milliseconds. A test that needs the models
# the suite trains once (small_models and what builds on them) is marked `trained`, one that runs a
# notebook or a browser `notebook`, one that takes more than a few seconds on its own `slow`; `make
# test-fast` leaves the three out, `make test` runs everything. The markers are declared in pyproject.toml.
TRAINED_FIXTURES = {"small_models", "small_run"}
NOTEBOOK_MODULES = {"test_notebooks", "test_lab_browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.trained)
        if item.module.__name__.rsplit(".", 1)[-1] in NOTEBOOK_MODULES:
            item.add_marker(pytest.mark.notebook)
GPT2_FILES = ROOT / "tests" / "data" / "gpt2"  # the real GPT-2 BPE files, shipped as test data


@pytest.fixture(scope="session")
def gpt2_files():
    import hashlib

    enc, bpe = GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe"
    assert hashlib.sha256(enc.read_bytes()).hexdigest().startswith("196139668be6"), f"{enc} is not GPT-2's"
    assert hashlib.sha256(bpe.read_bytes()).hexdigest().startswith("1ce1664773c5"), f"{bpe} is not GPT-2's"
    return enc, bpe


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)`'s result, made once per test run: under pytest-xdist the first worker builds it into
    a folder all workers of this run share (behind a file lock) and the others reuse it, so two workers
    never train the same models side by side. Treat what it returns as read-only."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's own
    done = shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            (shared / name).mkdir()
            done.write_text(str(build(shared / name)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small demo hw3_data/ (seed 7), shared by the whole session; treat as read-only."""
    from hw3lib.demo.world import write_demo_world

    return built_once(tmp_path_factory, "world",
                      lambda d: write_demo_world(d / "hw3_data", seed=7, size="small", progress=False))


@pytest.fixture(scope="session")
def small_models(small_world, tmp_path_factory):
    """The small demo models trained on `small_world`; returns the assets.json path."""
    from hw3lib.pretraining.demo_models import build_demo_models

    return built_once(tmp_path_factory, "models", lambda d: build_demo_models(small_world, d, size="small", seed=0))


def _train_small_run(small_models, small_world, folder: Path) -> Path:
    from hw3lib.captioning.runs import train_run

    out = folder / "lora"
    train_run(ROOT / "configs" / "demo" / "lora16.toml", small_models, small_world / "p2_data", out,
              {"max_steps": "30", "select_images": "4", "lora_r": "4", "device": "cpu", "val_every": "0",
               "attention_supervision": "0"})  # P3 and the CLI tests need captions that name objects early
    return out


@pytest.fixture(scope="session")
def small_run(small_models, small_world, tmp_path_factory):
    """A briefly trained LoRA captioner on the small world (run folder)."""
    return built_once(tmp_path_factory, "runs", lambda d: _train_small_run(small_models, small_world, d))


def private_copies(small_world, small_models, small_run, root) -> dict:
    """Copies that a test may damage: the data, the models with their manifest, a trained run."""
    import shutil

    from hw3lib.core.manifest import load_manifest

    data = shutil.copytree(small_world, root / "hw3_data")
    models = shutil.copytree(Path(small_models).parent, root / "models")
    run = shutil.copytree(small_run, root / "run")
    assets = models / Path(small_models).name
    m = load_manifest(assets)
    return {"data": data, "assets": assets, "run": run, "root": root, "manifest": m,
            "decoder": Path(m.decoder.weights), "val": data / "p2_data" / "images" / "val"}


def headless_chrome(profile_dir):
    """Debian's chromium driven by selenium, headless (skips the test when either is missing)."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("Debian chromium + chromium-driver are not installed (make test installs them as root)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile_dir}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


def load_script(relative: str):
    """A project script outside the package (bench/, tools/) imported as a module, by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args, cwd=None, isolated=False):
    """Run `hw3 ARGS`; returns a CompletedProcess (text). In this process by default (`cli.main` with
    its output captured): the command's code path is the same, without paying torch's import again.
    `isolated=True` runs `python -m hw3lib` in a subprocess, for what only a real process shows (bytes
    on a real stdout, a process-wide warning filter, signals)."""
    import subprocess
    import sys

    args = [str(a) for a in args]
    if isolated:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.run([sys.executable, "-m", "hw3lib", *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=600)
    return _run_in_process(args, cwd)


def _run_in_process(args: list[str], cwd):
    import contextlib
    import io
    import subprocess
    import warnings

    from hw3lib.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("default")  # each run warns afresh, as a new process would
        try:
            rc = main(args)
        except SystemExit as e:  # argparse's usage errors and --help
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return subprocess.CompletedProcess(["hw3", *args], rc, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def lock_held_elsewhere(lock: str, path, *args):
    """Another process holding `hw3lib.core.files.<lock>(path, *args)`: yields it once it holds the lock, and
    kills it on leaving (the kernel then drops the dead holder's lock)."""
    call = ", ".join(repr(str(a)) for a in (path, *args))
    holder = subprocess.Popen([sys.executable, "-c", f"import time\nfrom hw3lib.core.files import {lock}\n"
                               f"with {lock}({call}):\n    print('held', flush=True)\n    time.sleep(300)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
