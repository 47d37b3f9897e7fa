"""Two demo trainings one after the other (each with every core) vs side by side (one core each).

The demo captioner's matrices are small (batch 32 x <= 40 tokens, width 128), so threads scale poorly;
P2's eight variants are therefore trained `pipeline.auto_workers` at a time on a CPU. This measures the
claim on the trained demo models (`make demo`): LoRA r=16 and the adapter variant, `--steps` steps each
through `hw3 train`, in fresh run folders. Prints `name: value` lines.

    python bench/bench_parallel_training.py [--demo build/demo] [--steps 200]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("lora16", "adapter")


def train(variant: str, demo: Path, out: Path, steps: int, threads: int) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
                        "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hw3lib", "train", str(ROOT / "configs" / "demo" / f"{variant}.toml"),
           "--assets", str(demo / "models" / "assets.json"), "--data", str(demo / "hw3_data" / "p2_data"),
           "--out", str(out), "--device=cpu", f"--max_steps={steps}", "--val_images=4"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)


def wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"error: a training failed: {err.strip().splitlines()[-1:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    if not (args.demo / "models" / "assets.json").is_file():
        raise SystemExit(f"error: {args.demo}/models/assets.json: missing (run `make demo` first)")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        for v in VARIANTS:
            wait([train(v, args.demo, tmp / f"seq-{v}", args.steps, cores)])
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        wait([train(v, args.demo, tmp / f"par-{v}", args.steps, max(1, cores // len(VARIANTS))) for v in VARIANTS])
        parallel = time.perf_counter() - t0
    print(f"parallel_training_cores: {cores}")
    print(f"parallel_training_steps_each: {args.steps}")
    print(f"parallel_training_sequential_s: {sequential:.1f}  # {len(VARIANTS)} runs in a row, {cores} threads each")
    print(f"parallel_training_side_by_side_s: {parallel:.1f}  # {len(VARIANTS)} runs at once, "
          f"{max(1, cores // len(VARIANTS))} thread(s) each")
    print(f"parallel_training_speedup: {sequential / parallel:.2f}")


if __name__ == "__main__":
    main()
