"""Run every benchmark in turn (one at a time: they share two cores) and write a results table.

    python bench/run_all.py --out build/bench
Writes OUT/results.txt (all `name: value` lines) and OUT/results.md (a table the README quotes).
"""

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["bench_zeroshot.py", "bench_train.py", "bench_train_processes.py", "bench_decode.py", "bench_load.py", "bench_memory.py",
           "bench_weights_digest.py"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("build/bench"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    rows = []
    for b in BENCHES:
        t0 = time.time()
        print(f"[bench] {b} ...", flush=True)
        r = subprocess.run([sys.executable, str(here / b)], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{b} failed")
        for line in r.stdout.splitlines():
            if ": " in line and not line.startswith(("[", " ")):
                name, value = line.split(": ", 1)
                rows.append((b, name.strip(), value.strip()))
        print(f"[bench] {b} done in {time.time() - t0:.0f} s", flush=True)
    (args.out / "results.txt").write_text("".join(f"{n}: {v}\n" for _, n, v in rows))
    md = [f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; python {platform.python_version()}", "",
          "| benchmark | name | value |", "|---|---|---:|"] + [f"| {b} | {n} | {v} |" for b, n, v in rows]
    (args.out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
