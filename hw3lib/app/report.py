"""`python -m hw3lib.app.report`: regenerate the report headless - the three notebooks run through
papermill (from their jupytext sources; executed copies in notebooks/executed/, git-ignored), every
figure into `figures/`, then `figures/summary.md` and its JSON twin with the key numbers.

The report is a transaction over the files it writes, and only those: everything is written into a
staging folder inside `figures/` and inside the HTML report's folder, and once every notebook has finished
the files of both are committed together (`core.files.staged_files`: a journal, then one rename per file);
an interrupted or failed run leaves the previous report untouched. A user's own files, subfolders and links
in those folders are never touched, and either folder may be a link or a mount point. A demo world (a
DEMO.json in --data) trains the demo twins of the report's configs; real data trains configs/report_*.toml.
Only the report of the project's own demo world (make report's defaults) updates the numbers quoted in
README.md and docs/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from ..core.errors import HW3Error, error_line
from ..core.files import atomic_write_text, output_lock, read_json, staged_files
from ..core.results import VariantTable
from ..demo.models_record import DemoModels
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
    except Exception as e:
        if _stopping:  # the kernel was killed by Ctrl-C or SIGTERM (`_quiet_interrupts`)
            raise KeyboardInterrupt from None
        if isinstance(e, papermill.PapermillExecutionError):
            raise HW3Error(f"{name}: cell {e.exec_count} failed: {e.ename}: {e.evalue} (see {executed})") from e
        raise
    finally:
        staged.unlink(missing_ok=True)
    return executed


# the figures shown inline on the report's index page, in this order (those the run wrote)
KEY_FIGURES = ("p1_prompt_table.png", "p1_negation.png", "p1_frequency.png", "p1_negation_experiment.png",
               "p2_variants.png", "p2_grounding.png", "p2_decoding.png",
               "p2_paired_differences.png", "p3_ring_heart_ring_2.png", "p3_localisation.png")


def export_html(executed: list[Path], figures: Path, out_dir: Path, files: list[str] | None = None,
                figures_link: str | None = None) -> Path:
    """The report as one page, `index.html`: summary.md's tables, the key figures inline, then links to
    the executed notebooks as HTML (every output and figure inline) and to every figure this run wrote
    (`files`; default: what is in `figures`). Readable in a browser without a kernel. `figures_link`: how
    the page reaches the figures (default: `figures` relative to `out_dir`). Returns the index."""
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
    rel = figures_link or os.path.relpath(figures, out_dir)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hw3lib.app.report", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an hw3_data/ folder (a demo world has a DEMO.json)")
    p.add_argument("--assets", required=True, help="assets.json (or 'real')")
    p.add_argument("--project", type=Path, default=Path("."), help="the hw3lib checkout (notebooks/, configs/)")
    p.add_argument("--figures", type=Path, default=None, help="default: PROJECT/figures")
    p.add_argument("--runs", type=Path, default=None, help="default: PROJECT/build/runs")
    p.add_argument("--html", type=Path, default=None,
                   help="folder for the HTML copy of the executed notebooks and its index.html (default: "
                   "PROJECT/build/report)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        with _quiet_interrupts():
            return _main(args)
    except KeyboardInterrupt:
        print("interrupted: figures/ and the HTML report are as they were before this run", file=sys.stderr)
        return 130
    except Exception as e:  # one line, as the hw3 commands
        print(f"error: {error_line(e, 'python -m hw3lib.app.report')}", file=sys.stderr)
        return 2


def _main(args) -> int:
    from ..demo.world import DemoWorld

    if not args.data.is_dir():
        against = f" (a relative path, read against {Path.cwd()})" if not args.data.is_absolute() else ""
        raise HW3Error(f"{args.data}: data folder not found{against}")
    root = project_root(args.project)
    figures, runs = args.figures or root / "figures", args.runs or root / "build" / "runs"
    html_dir = args.html or root / "build" / "report"
    check_report_paths(args, {"--figures": figures, "--runs": runs, "--html": html_dir,
                              "notebooks/executed": root / "notebooks" / "executed"})
    require_kernel()
    demo = DemoWorld.load(args.data) is not None  # the one place the report tells the demo from real data
    assets = str(Path(args.assets).resolve()) if args.assets != "real" else "real"
    common = {"data_dir": str(args.data.resolve()), "assets": assets, "device": args.device}
    group = "demo" if demo else "real"
    # runs inside the project are named relative to notebooks/ (papermill's working folder), so that
    # no machine path reaches figures/p2_summary.json and summary.json
    p2 = {"runs_dir": notebook_relative(root, runs), "run_group": group,
          "configs_dir": str(root / "configs" / ("demo" if demo else "")),
          "variants": DEMO_VARIANTS if demo else REAL_VARIANTS,
          "reference": "lora16" if demo else "report_lora16"}  # the report's setting
    with output_lock(figures, "python -m hw3lib.app.report"):  # one report at a time per figures/ folder
        own_runs(runs, group, args.data, assets)
        for folder in (figures, html_dir):
            forget_swaps(folder)
        with staged_files([figures, html_dir], owned={figures: last_report_files(figures)}) as (stage, stage_html):
            executed = _run(root, stage, common | {"figures_dir": str(stage.resolve())}, p2)
            written = sorted(f.name for f in stage.iterdir() if f.is_file())
            doc = write_summary(stage, DemoModels.load(assets), written)
            written = written + ["summary.md", "summary.json"]
            index = export_html(executed, stage, stage_html, written,
                                os.path.relpath(figures.resolve(), html_dir.resolve()))
        # both committed: the report is whole
        if project_demo(root, args):  # the project's demo: its numbers, as README and docs/ quote them
            for path in refresh_quotes([root / "README.md", *sorted((root / "docs").glob("*.md"))], doc):
                print(f"[report] numbers quoted in {path.relative_to(root)} updated from summary.json")
        elif demo:
            print("[report] README.md and docs/ quote the project's own demo world: left as they were", flush=True)
    print(f"[report] figures and {figures / 'summary.md'} written ({len(written)} files)")
    print(f"[report] browsable report: {html_dir / index.name}")
    return 0


def forget_swaps(folder: Path) -> None:
    """What the report's earlier design (the whole folder swapped) may have left beside `folder`: the old
    folder moved aside by a crash between two renames is put back, and a staged `.NAME.partial` (a folder,
    or a link where `folder` was one) removed."""
    import shutil

    from ..core.files import recover_swap

    recover_swap(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.is_symlink() or partial.is_file():
        partial.unlink()
    elif partial.is_dir():
        shutil.rmtree(partial)


def project_demo(root: Path, args) -> bool:
    """Is this the report of the project's own demo world - make report's defaults: the demo world and
    models under build/demo, written into the project's figures/? Only that report's numbers are the ones
    README.md and docs/ quote; a report over any other data (another demo world included) leaves them."""
    demo = (root / "build" / "demo").resolve()
    return (args.figures is None and args.data.resolve() == demo / "hw3_data"
            and args.assets != "real" and Path(args.assets).resolve() == demo / "models" / "assets.json")


def last_report_files(figures: Path) -> list[str]:
    """The files the last report wrote into `figures` as its summary.json lists them: what the report owns
    there when the folder has no record of its last commit (a fresh clone's committed figures/)."""
    try:
        files = read_json(figures / "summary.json").get("files") if (figures / "summary.json").is_file() else None
    except (HW3Error, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def _run(root: Path, figures: Path, params: dict, p2: dict) -> list[Path]:
    """The three notebooks, writing into `figures` (the staged folder); the executed notebooks."""
    t_all, done = time.time(), []
    for i, name in enumerate(NOTEBOOKS, 1):
        extra = {NOTEBOOKS[1]: p2}.get(name, {})
        if name == NOTEBOOKS[2]:  # P3 looks at the captioner P2 shows (else its best variant)
            table = VariantTable.from_json(read_json(figures / "p2_summary.json"))
            shown = table.shown or table.best
            extra = {"checkpoint": shown.run, "checkpoint_assets": shown.assets}
        t0 = time.time()
        print(f"[report {i}/3] {name} ...", flush=True)
        done.append(run_notebook(root, name, params | extra, root / "notebooks" / "executed"))
        print(f"[report {i}/3] {name} done in {time.time() - t0:.0f} s", flush=True)
    print(f"[report] notebooks done in {time.time() - t_all:.0f} s", flush=True)
    return done


def own_runs(runs: Path, group: str, data: Path, assets: str) -> None:
    """The report trains into `runs/GROUP` (and writes the drawn-order world under `runs/worlds`), a cache
    it owns. It reuses or resumes what is there only when it can prove the runs are of these inputs: the
    inputs recorded in `runs/GROUP/INPUTS.json` (or, for a folder from before that file, in its finished
    reference run) equal the data's and the models' now. Otherwise the folder is runs of another world or
    of other models: it is removed, and everything trains afresh."""
    import shutil

    from ..captioning.runs import manifest_for
    from ..core.files import atomic_write_json
    from ..training.runfolder import changed_inputs, input_fingerprint

    if assets == "real":
        return  # real weights from the hub: nothing here records which; hw3 train refuses changed inputs itself
    folder = runs / group
    now = input_fingerprint(manifest_for(assets, parts=("encoder", "decoder", "tokenizer")), data / "p2_data")
    stamp = folder / "INPUTS.json"
    recorded = read_json(stamp) if stamp.is_file() else _reference_inputs(folder)
    if folder.exists() and any(folder.iterdir()) and (recorded is None or changed_inputs(recorded, now)):
        why = ", ".join(changed_inputs(recorded, now)) if recorded is not None else "no record of their inputs"
        print(f"[report] {folder}: runs of other inputs ({why[:200]}): removed, training afresh", flush=True)
        shutil.rmtree(folder)
        for world in (runs / "worlds").glob(f"{group}-*"):
            shutil.rmtree(world)
    atomic_write_json(stamp, now)


def _reference_inputs(folder: Path) -> dict | None:
    """The inputs a finished run under `folder` recorded (config.json), if any run finished there."""
    for config in sorted(folder.glob("*/config.json")):
        try:
            inputs = read_json(config).get("inputs")
        except (HW3Error, AttributeError):
            continue
        if isinstance(inputs, dict):
            return inputs
    return None


_stopping = False  # set by the first Ctrl-C or SIGTERM


@contextlib.contextmanager
def _quiet_interrupts():
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the report with one line. The notebooks' kernel runs in a session of
    its own (jupyter_client), so the terminal's Ctrl-C reaches only this process; were it left to papermill,
    it would interrupt the kernel and print the cell's traceback and every training worker's. Instead the
    kernel's whole process group is killed (its workers write atomically: nothing half-written stays), and
    the notebook that was running ends as an interrupt (`run_notebook`)."""
    import signal

    def stop(signum, frame):
        global _stopping
        first, _stopping = not _stopping, True
        if not _kill_kernels() and first:
            raise KeyboardInterrupt  # no kernel running: stop here

    # SIGHUP: the terminal or ssh session closed; the kernels (sessions of their own) would never hear of it
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kill_kernels() -> bool:
    """SIGKILL the process group of every child process (the Jupyter kernels, each a session leader, and
    what they started); whether there was one."""
    import logging
    import signal

    import psutil

    children = psutil.Process().children()
    if children:
        logging.disable(logging.CRITICAL)  # papermill's and nbclient's "kernel died" messages
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(child.pid) == child.pid:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                child.kill()
    return bool(children)


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
