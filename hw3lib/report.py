"""`python -m hw3lib.report`: run the report notebooks headless (papermill) against a data folder and an
asset manifest, writing figures into `figures/`.

Notebooks are the jupytext sources `notebooks/p*.py`; executed copies go to `notebooks/executed/`
(git-ignored). Notebooks that do not exist yet are listed as what comes next.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .io import HW3Error

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [
    ("p1_prompt_analysis", "P1 prompt analysis (CLIP zero-shot)"),
    ("p2_peft_captioning", "P2 PEFT captioning"),
    ("p3_attention_visualization", "P3 attention visualisation"),
]


def run_notebook(source: Path, out_dir: Path, parameters: dict, kernel: str = "hw3lib") -> Path:
    import jupytext
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(source)
    staged = out_dir / f"{source.stem}.input.ipynb"
    jupytext.write(nb, staged)
    executed = out_dir / f"{source.stem}.ipynb"
    papermill.execute_notebook(str(staged), str(executed), parameters=parameters, kernel_name=kernel,
                               cwd=str(ROOT / "notebooks"), progress_bar=False)
    staged.unlink()
    return executed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw3lib.report", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an hw3_data/ folder")
    p.add_argument("--assets", required=True, help="assets.json (or 'real')")
    p.add_argument("--figures", type=Path, default=ROOT / "figures")
    args = p.parse_args(argv)
    try:
        if not args.data.is_dir():
            raise HW3Error(f"{args.data}: data folder not found")
        todo = []
        for stem, title in NOTEBOOKS:
            source = ROOT / "notebooks" / f"{stem}.py"
            if not source.is_file():
                todo.append(f"{title} ({source.relative_to(ROOT)})")
                continue
            t0 = time.time()
            print(f"[report] running {source.name} ...", flush=True)
            params = {"data_dir": str(args.data.resolve()), "assets": str(Path(args.assets).resolve())
                      if args.assets != "real" else "real", "figures_dir": str(args.figures.resolve())}
            run_notebook(source, ROOT / "notebooks" / "executed", params)
            print(f"[report] {source.name} done in {time.time() - t0:.0f} s", flush=True)
        if todo:
            print("[report] demo data and models are ready; notebooks not written yet: " + "; ".join(todo))
    except HW3Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
