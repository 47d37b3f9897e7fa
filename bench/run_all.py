"""Run every benchmark in turn (one at a time: they share two cores) and record the results.

    python bench/run_all.py --out build/bench [--record docs/benchmarks.json --doc docs/benchmarks.md]

Writes OUT/results.json (the machine and every `name: value` line of every benchmark), OUT/results.txt
and OUT/results.md. With --record / --doc (what `make bench` passes) the JSON is also kept as the
committed record and the generated block of the doc is rewritten from it, as `make report` rewrites the
blocks quoting figures/summary.json; tests/test_docs.py keeps the two equal.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["bench_zeroshot.py", "bench_train.py", "bench_train_processes.py", "bench_decode.py", "bench_load.py",
           "bench_memory.py", "bench_weights_digest.py",
           "bench_train_step.py"]
BLOCK = re.compile(r"(<!-- bench: results [^\n]*-->\n)(.*?)(<!-- /bench -->)", re.S)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")  # the ones that change CPU speed


def machine() -> dict:
    """What made the numbers: the CPU (model, family/model, the flags that matter), cores, versions."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    import torch

    flags = set(info.get("flags", "").split())
    return {"cpu": info.get("model name", platform.processor() or platform.machine()),
            "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
            "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}


def render(record: dict) -> str:
    """The doc's generated block: the machine, then one row per measured line."""
    m = record["machine"]
    lines = [f"Measured on {record['date']}: {m['cpu']} (family/model {m['cpu_family_model']}; "
             f"{', '.join(m['cpu_flags']) or 'no AVX2'}), {m['cores']} cores, {m['torch_threads']} torch threads, "
             f"python {m['python']}, torch {m['torch']}.", "",
             "| benchmark | name | value |", "|---|---|---:|"]
    lines += [f"| {r['bench']} | `{r['name']}` | {r['value']} |" for r in record["results"]]
    return "\n".join(lines)


def fill(text: str, record: dict, source: str = "document") -> str:
    """`text` with its generated block (`<!-- bench: results ... -->` ... `<!-- /bench -->`) rewritten."""
    if not BLOCK.search(text):
        raise SystemExit(f"{source}: no '<!-- bench: results ... -->' block to fill")
    return BLOCK.sub(lambda mt: f"{mt.group(1)}{render(record)}\n{mt.group(3)}", text)


ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"[a-z][a-z0-9_]*")  # a measurement's name; other lines (a subprocess's messages) are not kept


def measured(bench: str, stdout: str) -> list[dict]:
    """The `name: value` lines of a benchmark's output; paths inside the project written relative to it
    (no machine path reaches the committed record)."""
    rows = []
    for line in stdout.splitlines():
        name, sep, value = line.partition(": ")
        if sep and NAME.fullmatch(name.strip()):
            value = value.strip().replace(str(ROOT), ".")
            rows.append({"bench": bench, "name": name.strip(), "value": value})
    return rows


def run(out: Path) -> dict:
    here = Path(__file__).parent
    rows = []
    for b in BENCHES:
        t0 = time.time()
        print(f"[bench] {b} ...", flush=True)
        r = subprocess.run([sys.executable, str(here / b)], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{b} failed")
        rows += measured(b, r.stdout)
        print(f"[bench] {b} done in {time.time() - t0:.0f} s", flush=True)
    return {"date": datetime.date.today().isoformat(), "machine": machine(), "results": rows}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("build/bench"))
    p.add_argument("--record", type=Path, help="keep results.json here too (the committed record)")
    p.add_argument("--doc", type=Path, help="rewrite this Markdown file's generated block from the record")
    args = p.parse_args()
    if args.doc is not None and not BLOCK.search(args.doc.read_text(encoding="utf-8")):
        raise SystemExit(f"error: {args.doc}: no '<!-- bench: results ... -->' block to fill")
    args.out.mkdir(parents=True, exist_ok=True)
    record = run(args.out)
    text = json.dumps(record, indent=1) + "\n"
    write_atomic(args.out / "results.json", text)
    write_atomic(args.out / "results.txt", "".join(f"{r['name']}: {r['value']}\n" for r in record["results"]))
    write_atomic(args.out / "results.md", render(record) + "\n")
    if args.record is not None:
        write_atomic(args.record, text)
    if args.doc is not None:
        write_atomic(args.doc, fill(args.doc.read_text(encoding="utf-8"), record, str(args.doc)))
    print(render(record))


if __name__ == "__main__":
    main()
