"""The P2 study: every PEFT variant trained (or reused) and scored on the same val images, with the
reference variant compared under other recipes and decoding controls (`compare_variants`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core.data import read_caption_file
from ..core.errors import HW3Error
from ..core.results import VariantRow, VariantTable
from ..demo.world import DemoWorld, write_demo_world
from ..models.clip import FrozenClipFeatures
from ..models.decoding import OFF, Controls, Decoding
from ..models.loading import load_clip
from ..training.config import load_config
from .runs import (
    Captioning,
    TrainJob,
    caption_folder,
    load_run,
    manifest_for,
    slug,
    train_jobs,
    validation_curve,
)
from .scoring import Scores, score_predictions, with_intervals


@dataclasses.dataclass
class Comparison:
    """What `compare_variants` found: the P2 table, and the captions behind it."""
    table: VariantTable  # every row, the best, beam search on it, the reference
    predictions: dict[str, dict[str, str]]  # row name -> {image key: caption}
    references: dict[str, list[str]]  # image key -> reference captions
    paths: dict[str, str]  # image key -> image file


# the decoding controls P2 compares on the best variant (greedy): transformers' semantics
DECODING_GRID = {"off": OFF, "no-repeat 3-gram": Controls(3), "repetition penalty 1.3": Controls(0, 1.3),
                 "both": Controls(3, 1.3)}


# the causal row: the reference variant, its recipe unchanged, on the count-aware CLIP's image tower
COUNT_AWARE_ROW = "the recipe on the count-aware encoder (Paiss et al.)"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A row of the mechanism ablation: the reference variant trained on other captions or settings."""
    p2_dir: Path  # the p2_data/ whose captions it trains on (images the same as the report's)
    overrides: dict[str, str]  # [train] settings that differ from the variant's config
    assets: str | None = None  # another asset manifest (another encoder); None: the comparison's
    against: str | None = None  # the ablation row its paired differences are taken against; None: the reference


# the captioner the report shows: a recipe trained until its held-out learning curve stops rising
SHOWN_ROW = "the captioner the report shows"


@dataclasses.dataclass(frozen=True)
class ComparisonSpec:
    """What `compare_variants` trains, decodes and scores."""
    variants: dict[str, str]  # row name -> its TOML config
    assets: str  # the asset manifest (a path, or "real")
    p2_dir: Path  # p2_data/: train.json, val.json, images/
    runs_dir: Path  # one run folder per row (reused when finished)
    reference: str | None = None  # the report's setting: every row is compared with it on the same images
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # [train] settings of every run
    ablation: dict[str, Recipe] = dataclasses.field(default_factory=dict)  # row -> the reference under a recipe
    controls: Controls = OFF  # decoding controls of every caption
    decoding_grid: dict[str, Controls] = dataclasses.field(default_factory=dict)  # the best variant decoded so
    beams_best: int = 3  # beam width for the best variant (1: no beam row)
    decode_batch: int = 64  # images decoded together, every row (each is decoded on its own: more at once, fewer steps)
    max_len: int = 40  # caption tokens at most
    world: DemoWorld | None = None  # the demo world (its objects score the captions); None on real data
    n_boot: int = 2000  # bootstrap resamples of every interval
    processes: int = 1  # runs trained at once on the CPU (`train_jobs`)
    # the captioner the report shows: the reference variant under this recipe, whose overrides let it train
    # longer and stop early (max_steps, patience); None: the report shows the best variant
    shown: Recipe | None = None

    def _recipe_job(self, name: str, recipe: Recipe, out: Path) -> TrainJob:
        return TrainJob(name, str(self.variants[self.reference]), recipe.p2_dir, out,
                        dict(self.overrides) | recipe.overrides, recipe.assets)

    def jobs(self) -> list[TrainJob]:
        """Every variant's run, then the reference variant's under each recipe of the ablation, then the
        shown captioner's."""
        out = [TrainJob(name, str(config), self.p2_dir, self.runs_dir / name, dict(self.overrides))
               for name, config in self.variants.items()]
        out += [self._recipe_job(name, recipe, self.runs_dir / "ablation" / slug(name))
                for name, recipe in self.ablation.items()]
        if self.shown is not None:
            if self.reference is None:
                raise HW3Error("the shown captioner is the reference variant under a recipe: name the reference")
            out.append(self._recipe_job(SHOWN_ROW, self.shown, self.runs_dir / "shown"))
        return out


@dataclasses.dataclass
class _Captioner:
    """Captions the val images and scores them, one way for every row."""
    spec: ComparisonSpec
    manifest: object
    clip: object
    paths: list
    device: str
    progress: bool

    def decoding(self, beams: int = 1, how: Controls | None = None) -> Decoding:
        """Every row's decoding: the spec's length, batch and controls (`how` overrides the controls)."""
        s = self.spec
        return Decoding(beams, s.max_len, controls=s.controls if how is None else how, batch_size=s.decode_batch)

    def __call__(self, model, beams: int = 1, how: Controls | None = None) -> tuple[dict[str, str], Scores]:
        s = self.spec
        preds = caption_folder(model, self.manifest, self.paths, self.decoding(beams, how), self.device, self.progress)
        return preds, score_predictions(preds, s.p2_dir, self.manifest, self.clip, self.device, s.world)


def longest_first(jobs: list[TrainJob]) -> list[TrainJob]:
    """The jobs by their planned work, most first (its steps, a whole-epochs run counting as the most, then its
    validations; ties keep their order), so that a pool does not end on a long job running alone."""
    def work(job: TrainJob) -> tuple[float, float]:
        cfg = load_config(job.config, job.overrides)[1]
        steps = cfg.max_steps or float("inf")
        return steps, steps / cfg.val_every if cfg.val_every else 1.0

    return sorted(jobs, key=work, reverse=True)


def compare_variants(spec: ComparisonSpec, device="cpu", progress=True) -> Comparison:
    """Train (or reuse) each variant, caption the val split greedily, evaluate; plus the untrained
    model, greedy vs beam for the best variant, the decoding grid on it, and the reference variant under
    each recipe of the ablation. Every row carries bootstrap intervals, and paired differences against
    the reference (or, for the decoding grid and beam, against the best variant's greedy captions).
    Every run's validations on its held-out training images are the table's learning curves."""
    m = manifest_for(spec.assets)
    val = read_caption_file(spec.p2_dir / "val.json", spec.p2_dir / "images" / "val")
    # one CLIP scores every row: the val images and their references are encoded once
    run = _Captioner(spec, m, FrozenClipFeatures(load_clip(m.clip, device)), [im.path for im in val.images],
                     device, progress)
    jobs = spec.jobs()
    trained = train_jobs(longest_first(jobs), spec.assets, device, spec.processes,
                         Captioning(tuple(run.paths), run.decoding()))
    preds, sc = run(load_run(None, m, device))
    scored, preds_by = {"untrained": sc}, {"untrained": preds}
    evaluated = []
    for i, job in enumerate(jobs, 1):
        done = trained[job.name]
        sc = score_predictions(done.predictions, job.p2_dir, m, run.clip, device, spec.world)  # one scorer for all
        s = done.summary
        evaluated.append((VariantRow(job.name, sc.CIDEr, sc.CLIPScore, done.peft, s.trainable, str(job.out),
                                     steps=s.steps, best_step=s.best_step, stopped=s.stopped, assets=job.assets), sc))
        print(f"[evaluate {i}/{len(jobs)}] {job.name}: CIDEr {sc.CIDEr:.3f} CLIPScore {sc.CLIPScore:.3f}", flush=True)
        key = job.name if i <= len(spec.variants) or job.name == SHOWN_ROW else f"recipe: {job.name}"
        scored[key], preds_by[key] = sc, done.predictions
    table = _table(spec, run, scored, preds_by, evaluated)
    return Comparison(table, preds_by, val.references(), {im.key: str(im.path) for im in val.images})


def _table(spec: ComparisonSpec, run: _Captioner, scored: dict[str, Scores], preds_by: dict, evaluated: list
           ) -> VariantTable:
    """The P2 table from the scored rows: intervals, the best variant, its beam and decoding-grid rows,
    the ablation and the learning curves."""
    n = len(spec.variants)
    ref = scored.get(spec.reference) if spec.reference else None
    rows = [VariantRow("untrained", scored["untrained"].CIDEr, scored["untrained"].CLIPScore)]
    rows = [with_intervals(r, scored[r.variant], ref, spec.n_boot) for r in rows + [r for r, _ in evaluated[:n]]]
    trained = [r for r in rows if r.run]
    best = max(trained, key=lambda r: r.CIDEr) if trained else None
    beam, decoding = None, []
    if best is not None and spec.beams_best > 1:
        preds, sc = run(load_run(best.run, run.manifest, run.device), spec.beams_best)
        beam = with_intervals(VariantRow(best.variant, sc.CIDEr, sc.CLIPScore, best.peft, best.trainable, best.run,
                                         spec.beams_best), sc, scored[best.variant], spec.n_boot)
        preds_by[f"{best.variant} (beam {spec.beams_best})"] = preds
    if best is not None and spec.decoding_grid:
        model, first = load_run(best.run, run.manifest, run.device), None
        for name, how in spec.decoding_grid.items():
            # the best variant's own greedy captions were decoded with `controls` already
            sc = scored[best.variant] if how == spec.controls else run(model, 1, how)[1]
            first = first or sc
            decoding.append(with_intervals(VariantRow(f"{best.variant}, {name}", sc.CIDEr, sc.CLIPScore, best.peft,
                                                      best.trainable, best.run), sc, first, spec.n_boot))
    recipes = [*spec.ablation.values(), *([spec.shown] if spec.shown is not None else [])]
    ablated = [with_intervals(dataclasses.replace(r, against=recipe.against), sc,
                              scored[f"recipe: {recipe.against}"] if recipe.against else ref, spec.n_boot)
               for (r, sc), recipe in zip(evaluated[n:], recipes, strict=True)]
    shown = ablated.pop() if spec.shown is not None else None
    curves = {r.variant: validation_curve(r.run) for r in rows + ablated + ([shown] if shown else []) if r.run}
    return VariantTable(rows, best, beam, spec.reference if ref else None, decoding=decoding, ablation=ablated,
                        curves=curves, shown=shown)


def caption_order_world(world: DemoWorld, out_dir, order: str) -> Path:
    """The demo world `world` written again with captions in another `order` (the same images and
    objects), into `out_dir` unless it is there already; returns its hw3_data/ folder. A folder there that
    is another world's (its objects differ: the orders share every random draw) is written anew."""
    import shutil

    out = Path(out_dir)
    try:
        there = DemoWorld.load(out)  # None: no world there; an error: one another grammar wrote
    except HW3Error:
        there = None
    mine = there is not None and there.caption_order == order and there.objects("p2_data") == world.objects("p2_data")
    if not mine:
        if out.exists():
            shutil.rmtree(out)
        write_demo_world(out, seed=world.seed, size=world.size, progress=False, caption_order=order)
    return out
