"""What keying the feature cache by the encoder's content costs (#38): the sha256 of a weights file of the
size of a real ViT-g encoder checkpoint, the first time (the whole file read) and again (remembered in the
cache's weights-digests.json by the file's identity, one stat), against the old key (name, size, mtime).

    python bench/bench_weights_digest.py                  # a 1.8 GB file of random bytes under build/bench-work
    python bench/bench_weights_digest.py --bytes 2e8      # quick

Prints `name: value` lines. The page cache holds the file after it is written, so "first" is a read from
memory; from a cold disk it is bounded by the disk's read speed instead.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bytes", type=float, default=1.8e9, help="size of the weights file")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-work")
    args = p.parse_args()
    from hw3lib.training.feature_cache import weights_digest

    args.work.mkdir(parents=True, exist_ok=True)
    weights, memo = args.work / "encoder.safetensors", args.work / "weights-digests.json"
    size = int(args.bytes)
    try:
        with open(weights, "wb") as f:
            left = size
            while left:
                f.write(os.urandom(min(left, 64 << 20)))
                left -= min(left, 64 << 20)
        memo.unlink(missing_ok=True)
        t0 = time.perf_counter()
        weights_digest(weights)  # no memo: the whole file
        first = time.perf_counter() - t0
        weights_digest(weights, memo)  # fills the memo
        t0 = time.perf_counter()
        for _ in range(100):
            weights_digest(weights, memo)
        again = (time.perf_counter() - t0) / 100
        t0 = time.perf_counter()
        for _ in range(100):
            st = os.stat(weights)
            key = (weights.name, st.st_size, st.st_mtime_ns)  # noqa: F841 - what the old key cost
        old = (time.perf_counter() - t0) / 100
    finally:
        weights.unlink(missing_ok=True)
        memo.unlink(missing_ok=True)
    print(f"weights file: {size / 1e9:.2f} GB")
    print(f"content key, first time (whole file, sha256): {first:.2f} s ({size / first / 1e9:.2f} GB/s)")
    print(f"content key, remembered (one stat + memo read): {again * 1e3:.2f} ms")
    print(f"old key (name, size, mtime): {old * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
