import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would flood the captured output

ROOT = Path(__file__).resolve().parents[1]
SHARED_GPT2 = ROOT.parent / "shared" / "gpt2"


@pytest.fixture(scope="session")
def gpt2_files():
    enc, bpe = SHARED_GPT2 / "encoder.json", SHARED_GPT2 / "vocab.bpe"
    if not enc.is_file():
        pytest.skip(f"real GPT-2 BPE files not found at {SHARED_GPT2}")
    return enc, bpe


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small demo hw3_data/ (seed 7), shared by the whole session; treat as read-only."""
    from hw3lib.demo import write_demo_world

    return write_demo_world(tmp_path_factory.mktemp("world") / "hw3_data", seed=7, size="small", progress=False)


@pytest.fixture(scope="session")
def small_models(small_world, tmp_path_factory):
    """The small demo models trained on `small_world`; returns the assets.json path."""
    from hw3lib.pretrain import build_demo_models

    return build_demo_models(small_world, tmp_path_factory.mktemp("models"), size="small", seed=0)


@pytest.fixture(scope="session")
def small_run(small_models, small_world, tmp_path_factory):
    """A briefly trained LoRA captioner on the small world (run folder)."""
    from hw3lib.pipeline import train_run

    out = tmp_path_factory.mktemp("runs") / "lora"
    train_run(ROOT / "configs" / "demo" / "lora16.toml", small_models, small_world / "p2_data", out,
              {"max_steps": "30", "val_images": "4", "lora_r": "4", "device": "cpu"})
    return out


def run_cli(*args, cwd=None):
    """Run `python -m hw3lib ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "hw3lib", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
