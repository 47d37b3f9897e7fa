"""The three paired notebooks: in sync with their jupytext sources, valid, free of model code, and
running headless under papermill with smoke parameters."""

import ast
import json
from pathlib import Path

import nbformat
import pytest

from hw3lib.captioning.study import COUNT_AWARE_ROW, SHOWN_ROW
from hw3lib.zeroshot.templates import REPORT

from .conftest import ROOT

NOTEBOOKS = ["p1_prompt_analysis", "p2_peft_captioning", "p3_attention_visualization"]


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_is_in_sync_and_valid(name):
    import jupytext

    py, ipynb = ROOT / "notebooks" / f"{name}.py", ROOT / "notebooks" / f"{name}.ipynb"
    a, b = jupytext.read(py), jupytext.read(ipynb)
    assert _cells(a) == _cells(b), f"{py.name} and {ipynb.name} disagree: run `jupytext --sync {py}`"
    nbformat.validate(nbformat.read(ipynb, as_version=4))  # opens cleanly in JupyterLab
    params = [c for c in b.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "smoke" in params[0].source and "figures_dir" in params[0].source
    # papermill reads a parameter line with one "=" only ("Unable to parse line" otherwise)
    lines = [ln for ln in params[0].source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert all(ln.count("=") == 1 for ln in lines), [ln for ln in lines if ln.count("=") != 1]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_holds_no_model_or_training_code(name):
    tree = ast.parse((ROOT / "notebooks" / f"{name}.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)], "notebooks define no classes"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)], "no function definitions either"
    src = (ROOT / "notebooks" / f"{name}.py").read_text()
    for banned in ("torch.nn", "nn.Module", ".backward(", "optim.", "zero_grad", "F.cross_entropy"):
        assert banned not in src, f"{name}: model/training code ({banned}) belongs in hw3lib"


def test_report_names_a_missing_kernel_in_one_line():
    from hw3lib.app.report import require_kernel
    from hw3lib.core.errors import HW3Error

    require_kernel("hw3lib")  # make venv registered it
    with pytest.raises(HW3Error, match="ipykernel install --sys-prefix --name no-such-kernel"):
        require_kernel("no-such-kernel")


def _run(name, tmp_path, **params):
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                               parameters={"device": "cpu", "smoke": True, **params}, kernel_name="python3",
                               cwd=str(ROOT / "notebooks"), progress_bar=False)


def inline_images(executed) -> int:
    nb = nbformat.read(executed, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_p1_notebook_smoke_shows_every_figure_inline(small_models, small_world, tmp_path):
    fig = tmp_path / "figures"
    _run("p1_prompt_analysis", tmp_path, data_dir=str(small_world), assets=str(small_models), figures_dir=str(fig))
    saved = len(list(fig.glob("*.png")))
    assert saved >= 5 and inline_images(tmp_path / "p1_prompt_analysis.ipynb") >= saved
    # the demo world's sections ran: the style study (base CLIP and the old design's), the frequency study,
    # and the negation experiment (two CLIPs and the sign baseline)
    assert {"p1_styles.png", "p1_frequency.png", "p1_negation_experiment.png"} <= {f.name for f in fig.glob("*.png")}
    doc = json.loads((fig / "p1_summary.json").read_text())
    assert [s["name"] for s in doc["negation_experiment"]] == ["base", "negation-tuned", "base, negation by sign"]
    assert [s["clip"] for s in doc["styles"]][0] == "base" and len(doc["styles"]) == 2
    assert sum(r["images"] for r in doc["styles"][0]["rows"]) == doc["prompts"]["n_images"]
    assert len(doc["frequency"]["templates"]) == 3 + 80 and doc["frequency"]["report_prompts"] == 3
    for name in ("p1_prompt_table", "p1_per_class_accuracy", "p1_confusion", "p1_top5", "p1_selection"):
        assert (fig / f"{name}.png").stat().st_size > 5000
    assert [r["prompt"] for r in doc["prompts"]["rows"][:3]] == list(REPORT)
    # the count test: every CLIP of the demo models on the P2 val images (their counts from boxes.json)
    n_val = len(list((small_world / "p2_data" / "images" / "val").iterdir()))
    assert [r["clip"] for r in doc["counting"]] == ["base", "negation-tuned", "count-aware"]
    assert doc["counting"][0]["n"] == n_val and (fig / "p1_counting.png").stat().st_size > 5000
    assert doc["counting"][0]["chance"] == pytest.approx(1 / 3)


def test_p2_notebook_smoke(small_models, small_world, tmp_path):
    fig = tmp_path / "figures"
    _run("p2_peft_captioning", tmp_path, data_dir=str(small_world), assets=str(small_models),
         figures_dir=str(fig), runs_dir=str(tmp_path / "runs"), configs_dir=str(ROOT / "configs" / "demo"), beams=2)
    for f in ("p2_variants", "p2_pareto", "p2_training_curves", "p2_greedy_vs_beam", "p2_examples"):
        assert (fig / f"{f}.png").stat().st_size > 5000, f
    saved = len(list(fig.glob("*.png")))
    assert inline_images(tmp_path / "p2_peft_captioning.ipynb") >= saved >= 5  # every saved figure also shown
    nb = nbformat.read(tmp_path / "p2_peft_captioning.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # progress per run; the pool takes the longest job first (the shown captioner)
    assert f"[train 1/6] {SHOWN_ROW}" in text and "[evaluate 2/6] lora16: CIDEr" in text
    summary = json.loads((fig / "p2_summary.json").read_text())
    assert [r["variant"] for r in summary["rows"]] == ["untrained", "none", "lora16"]
    assert summary["rows"][2]["trainable"] > summary["rows"][1]["trainable"] > 0
    for f in ("p2_probe", "p2_mechanisms", "p2_learning_curves"):  # the diagnosis and the ablation
        assert (fig / f"{f}.png").stat().st_size > 5000, f
    tasks = ["patch colour", "patch shape", "object count (CLS token)", "object count (mean of patches)",
             "patch row", "patch column", "object region (3 x 3)", "pair: left of the other"]
    assert [(r["encoder"], r["task"]) for r in summary["probe"]] == [(e, t) for e in ("count-blind", "count-aware")
                                                                     for t in tasks]  # both encoders probed
    # the smoke run's ablation rows: the first design, the count-aware encoder, a position mechanism on it
    row, aware, where = summary["ablation"]
    assert row["variant"].startswith("first design") and "exact" in row["vs_reference"]
    assert where["against"] == COUNT_AWARE_ROW and "patch positions" in where["variant"]
    assert json.loads((Path(where["run"]) / "config.json").read_text())["captioner"]["patch_position"] == "sincos"
    assert set(where["spatial"]) == {"left", "right", "above", "below", "region"}
    assert aware["variant"] == COUNT_AWARE_ROW and {"exact", "right_count", "repeats"} <= set(aware["vs_reference"])
    trained_on = json.loads((Path(aware["run"]) / "config.json").read_text())["inputs"]
    assert "encoder_counting" in json.dumps(trained_on)  # the causal row trained on the count-aware image tower
    assert set(summary["curves"]) == {"none", "lora16", row["variant"], aware["variant"], where["variant"], SHOWN_ROW}
    shown = summary["shown"]  # the captioner P3 and the examples show: the recipe on the count-aware encoder
    assert (shown["variant"], shown["steps"], shown["assets"]) == (SHOWN_ROW, 16, aware["assets"])
    assert all(p["exact"] is not None and p["pointing_next"] is not None for c in summary["curves"].values() for p in c)
    drawn = json.loads((tmp_path / "runs" / "worlds" / "smoke-drawn" / "DEMO.json").read_text())
    assert drawn["caption_order"] == "drawn" and drawn["seed"] == 7


def test_p3_notebook_smoke(small_models, small_world, small_run, tmp_path):
    fig = tmp_path / "figures"
    _run("p3_attention_visualization", tmp_path, data_dir=str(small_world), assets=str(small_models),
         checkpoint=str(small_run), checkpoint_assets=None, figures_dir=str(fig))
    assert len(list(fig.glob("p3_*.png"))) >= 5 + 2 + 2  # P3 images, top/last-1, localisation plots
    assert (fig / "p3_viewer.html").stat().st_size > 10_000
    assert inline_images(tmp_path / "p3_attention_visualization.ipynb") >= len(list(fig.glob("*.png")))
    nb = nbformat.read(tmp_path / "p3_attention_visualization.ipynb", as_version=4)
    widgets = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the attention explorer is displayed"
    summary = json.loads((fig / "p3_summary.json").read_text())
    assert set(summary["extremes"]) == {"top-1", "last-1"}


def test_clipscore_extremes_are_the_max_and_min_of_scores_computed_one_by_one(small_models, small_world, small_run):
    """The extremes P3 shows are the best and worst captions by CLIPScore, recomputed here image by image
    (batch 1) against the evaluator's batched scores."""
    from hw3lib.captioning.runs import load_run, manifest_for
    from hw3lib.captioning.scoring import clipscore_extremes
    from hw3lib.metrics.captions import clip_scores
    from hw3lib.models.loading import load_clip

    m = manifest_for(small_models)
    clip = load_clip(m.clip)
    ext = clipscore_extremes(load_run(small_run, m), m, small_world / "p2_data", limit=8, clip=clip)
    one = {k: float(clip_scores(clip, [ext.paths[k]], [c], batch_size=1).clipscore[0])
           for k, c in ext.predictions.items()}
    assert len(one) == 8 and len(set(one.values())) > 1, "the test needs captions that score differently"
    assert ext.top == max(one, key=one.get) and ext.last == min(one, key=one.get)
    for k, score in one.items():
        assert ext.clipscores[k] == pytest.approx(score, abs=1e-5)


def test_p1_notebook_skips_the_demo_sections_for_a_clip_of_unknown_text(small_models, small_world, tmp_path):
    """A manifest without the demo's metrics.json and negation-tuned CLIP beside it (as for real CLIP):
    the prompt table and the negation study run; the frequency and fine-tuning sections say why they
    skip, and write nothing."""
    from hw3lib.core.manifest import load_manifest

    m = load_manifest(small_models)
    m.save(tmp_path / "assets.json")  # resolved, absolute paths; no metrics.json beside it
    fig = tmp_path / "figures"
    _run("p1_prompt_analysis", tmp_path, data_dir=str(small_world), assets=str(tmp_path / "assets.json"),
         figures_dir=str(fig))
    doc = json.loads((fig / "p1_summary.json").read_text())
    assert doc["frequency"] is None and doc["negation_experiment"] is None and doc["negation"]["classes"]
    assert [r["clip"] for r in doc["counting"]] == ["base"]  # any CLIP counts, given images of known counts
    assert not (fig / "p1_frequency.png").exists() and not (fig / "p1_negation_experiment.png").exists()
    text = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "p1_prompt_analysis.ipynb", as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "skipped: the frequency study needs the demo world" in text
    assert "skipped: the negation experiment needs the demo world" in text
