"""`python -m hw3lib.app.report`: regenerate the report headless - the three notebooks run through
papermill (from their jupytext sources; executed copies in notebooks/executed/, git-ignored), every
figure into `figures/`, then `figures/summary.md` and its JSON twin with the key numbers.

Demo world (default) or real data: `--data /path/to/hw3_data --assets assets.json --real` uses the
report's configs (configs/report_*.toml) instead of the demo twins.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..core.errors import HW3Error, error_line
from ..core.files import atomic_write_text, output_lock, read_json
from ..core.results import VariantTable
from .summary import refresh_quotes, write_summary

NOTEBOOKS = ("p1_prompt_analysis", "p2_peft_captioning", "p3_attention_visualization")
DEMO_VARIANTS = ["none", "lora16", "lora8", "adapter", "prompt", "prefix", "dora", "ia3"]
REAL_VARIANTS = ["report_lora16", "report_lora8", "report_adapter", "report_prompt"]


def require_kernel(kernel: str = "hw3lib") -> None:
    """The Jupyter kernel the notebooks run on must be registered (make venv does it)."""
    from jupyter_client.kernelspec import KernelSpecManager

    if kernel not in KernelSpecManager().find_kernel_specs():
        raise HW3Error(f"Jupyter kernel {kernel!r} is not registered: run `make venv`, or "
                       f"`python -m ipykernel install --sys-prefix --name {kernel}` in this environment")


def project_root(path: Path) -> Path:
    """The checkout holding notebooks/ and configs/ (the notebooks are project files, not package data)."""
    path = path.resolve()
    missing = [f"notebooks/{n}.py" for n in NOTEBOOKS if not (path / "notebooks" / f"{n}.py").is_file()]
    if missing or not (path / "configs" / "demo").is_dir():
        raise HW3Error(f"{path}: not an hw3lib checkout (no {(missing or ['configs/demo'])[0]}); run from the "
                       "checkout or pass --project")
    return path


def run_notebook(root: Path, name: str, parameters: dict, out_dir: Path, kernel: str = "hw3lib") -> Path:
    import jupytext
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    staged = out_dir / f"{name}.input.ipynb"
    jupytext.write(jupytext.read(root / "notebooks" / f"{name}.py"), staged)  # the .py is the source of truth
    executed = out_dir / f"{name}.ipynb"
    try:  # the notebook's own output (per-variant lines, progress bars) streams through as it comes
        papermill.execute_notebook(str(staged), str(executed), parameters=parameters, kernel_name=kernel,
                                   cwd=str(root / "notebooks"), progress_bar=False,
                                   stdout_file=sys.stdout, stderr_file=sys.stderr)
    except papermill.PapermillExecutionError as e:
        raise HW3Error(f"{name}: cell {e.exec_count} failed: {e.ename}: {e.evalue} (see {executed})") from e
    finally:
        staged.unlink(missing_ok=True)
    return executed


# the figures shown inline on the report's index page, in this order (those the run wrote)
KEY_FIGURES = ("p1_prompt_table.png", "p1_negation.png", "p1_frequency.png", "p1_negation_experiment.png",
               "p2_variants.png", "p2_grounding.png", "p2_decoding.png",
               "p2_paired_differences.png", "p3_ring_heart_ring_2.png", "p3_localisation.png")


def export_html(executed: list[Path], figures: Path, out_dir: Path, files: list[str] | None = None) -> Path:
    """The report as one page, `index.html`: summary.md's tables, the key figures inline, then links to
    the executed notebooks as HTML (every output and figure inline) and to every figure this run wrote
    (`files`; default: what is in `figures`). Readable in a browser without a kernel. Returns the index."""
    import html
    import os

    import mistune
    from nbconvert import HTMLExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    links = []
    for nb in executed:
        body, _ = exporter.from_filename(str(nb))
        atomic_write_text(out_dir / f"{nb.stem}.html", body)
        links.append(f'<li><a href="{nb.stem}.html">{html.escape(nb.stem)}</a></li>')
    rel = os.path.relpath(figures, out_dir)
    names = sorted(files) if files is not None else sorted(f.name for f in figures.iterdir())
    names = [n for n in names if (figures / n).is_file() and Path(n).suffix in (".png", ".html", ".md", ".json")]
    summary = (figures / "summary.md").read_text(encoding="utf-8") if (figures / "summary.md").is_file() else ""
    # raw HTML in summary.md is shown as text (escape=True): its data strings are escaped already (md_text),
    # and nothing else on the page may turn text into markup
    render = mistune.create_markdown(escape=True, plugins=["strikethrough", "table"])
    body = render(summary.split("\n", 1)[1] if summary.startswith("# ") else summary)
    key = "".join(f'<figure><img src="{rel}/{n}" alt="{html.escape(n)}"><figcaption>{html.escape(n)}</figcaption>'
                  "</figure>" for n in KEY_FIGURES if n in names)
    figs = "".join(f'<li><a href="{rel}/{n}">{html.escape(n)}</a></li>' for n in names)
    atomic_write_text(out_dir / "index.html", f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hw3lib report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}} img{{max-width:100%}} figure{{margin:1.5em 0}}</style>
</head><body>
<h1>hw3lib report</h1><p>Generated by <code>make report</code>. The numbers, then the key figures, then the executed
notebooks (every output inline) and every figure.</p>
{body}
<h2>Key figures</h2>{key}
<h2>Notebooks</h2><ul>{''.join(links)}</ul><h2>Every figure</h2><ul>{figs}</ul></body></html>
""")
    return out_dir / "index.html"


OWNED = ("p1_*", "p2_*", "p3_*", "summary.md", "summary.json")  # what the report writes in figures/


def prune_stale(figures: Path, since: float) -> list[str]:
    """Remove the report's own files in `figures` that this run did not write (older than `since`:
    figures of an older demo world); returns the names of those it did write."""
    kept = []
    for pattern in OWNED:
        for f in figures.glob(pattern):
            if f.is_file() and f.stat().st_mtime < since:
                f.unlink()
            elif f.is_file():
                kept.append(f.name)
    return sorted(kept)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw3lib.app.report", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an hw3_data/ folder")
    p.add_argument("--assets", required=True, help="assets.json (or 'real')")
    p.add_argument("--project", type=Path, default=Path("."), help="the hw3lib checkout (notebooks/, configs/)")
    p.add_argument("--figures", type=Path, default=None, help="default: PROJECT/figures")
    p.add_argument("--runs", type=Path, default=None, help="default: PROJECT/build/runs")
    p.add_argument("--html", type=Path, default=None,
                   help="folder for the HTML copy of the executed notebooks and its index.html (default: "
                   "PROJECT/build/report)")
    p.add_argument("--real", action="store_true", help="real data: the report's configs, not the demo twins")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        if not args.data.is_dir():
            raise HW3Error(f"{args.data}: data folder not found")
        root = project_root(args.project)
        figures, runs = args.figures or root / "figures", args.runs or root / "build" / "runs"
        html_dir = args.html or root / "build" / "report"
        check_report_paths(args, {"--figures": figures, "--runs": runs, "--html": html_dir,
                                  "notebooks/executed": root / "notebooks" / "executed"})
        require_kernel()
        assets = str(Path(args.assets).resolve()) if args.assets != "real" else "real"
        common = {"data_dir": str(args.data.resolve()), "assets": assets, "device": args.device,
                  "figures_dir": str(figures.resolve())}
        # runs inside the project are named relative to notebooks/ (papermill's working folder), so that
        # no machine path reaches figures/p2_summary.json and summary.json
        p2 = {"runs_dir": notebook_relative(root, runs), "run_group": "real" if args.real else "demo",
              "configs_dir": str(root / "configs" / ("" if args.real else "demo")),
              "variants": REAL_VARIANTS if args.real else DEMO_VARIANTS,
              "reference": "report_lora16" if args.real else "lora16"}  # the report's setting
        with output_lock(figures, "python -m hw3lib.app.report"):  # one report at a time per figures/ folder
            return _run(args, root, figures, html_dir, common, p2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, as the hw3 commands
        print(f"error: {error_line(e, 'python -m hw3lib.app.report')}", file=sys.stderr)
        return 2


def _run(args, root: Path, figures: Path, html_dir: Path, common: dict, p2: dict) -> int:
    """The three notebooks, then the summary, the quoted numbers and the index page."""
    assets = common["assets"]
    t_all, done = time.time(), []
    for i, name in enumerate(NOTEBOOKS, 1):
        extra = {NOTEBOOKS[1]: p2}.get(name, {})
        if name == NOTEBOOKS[2]:  # P3 looks at P2's best run
            extra = {"checkpoint": VariantTable.from_json(read_json(figures / "p2_summary.json")).best.run}
        t0 = time.time()
        print(f"[report {i}/3] {name} ...", flush=True)
        done.append(run_notebook(root, name, common | extra, root / "notebooks" / "executed"))
        print(f"[report {i}/3] {name} done in {time.time() - t0:.0f} s", flush=True)
    written = prune_stale(figures, t_all)
    doc = write_summary(figures, Path(assets).parent if assets != "real" else None, written)
    if not args.real and args.figures is None:  # the demo's numbers, as README and docs/ quote them
        for path in refresh_quotes([root / "README.md", *sorted((root / "docs").glob("*.md"))], doc):
            print(f"[report] numbers quoted in {path.relative_to(root)} updated from summary.json")
    index = export_html(done, figures, html_dir, written + ["summary.md", "summary.json"])
    print(f"[report] figures and {figures / 'summary.md'} written in {time.time() - t_all:.0f} s")
    print(f"[report] browsable report: {index}")
    return 0


def notebook_relative(root: Path, path: Path) -> str:
    """`path` as the notebooks (run with notebooks/ as working folder) name it: relative when it lies
    inside the project, absolute otherwise."""
    path, notebooks = path.resolve(), (root / "notebooks").resolve()
    if path.is_relative_to(root.resolve()):
        return os.path.relpath(path, notebooks)
    return str(path)


def check_report_paths(args, outputs: dict) -> None:
    """The report's output folders must be writable and hold none of its inputs (the data, the
    manifest and its files): it owns what is in them."""
    from ..core.files import check_outputs
    from ..core.manifest import manifest_inputs

    inputs = [args.data, *manifest_inputs(args.assets)]
    check_outputs({}, outputs, inputs)
    for label, folder in outputs.items():
        for i in inputs:
            if Path(i).exists() and Path(i).resolve().is_relative_to(Path(folder).resolve()):
                raise HW3Error(f"{label} {folder}: holds the input {i}, which the report would write over "
                               "(move the input, or choose another output folder)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
