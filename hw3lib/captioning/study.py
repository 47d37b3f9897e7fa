"""The P2 study: every PEFT variant trained (or reused) and scored on the same val images, with the
reference variant compared under other recipes and decoding controls (`compare_variants`)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from ..core.data import read_caption_file
from ..core.results import VariantRow, VariantTable
from ..demo.world import DemoWorld, write_demo_world
from ..models.decoding import OFF, Controls, Decoding
from ..models.loading import load_clip
from .runs import (
    TrainJob,
    caption_folder,
    load_run,
    manifest_for,
    slug,
    train_jobs,
    validation_curve,
    write_val_predictions,
)
from .scoring import score_predictions, with_intervals


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


def compare_variants(variants: dict[str, str | os.PathLike], assets, p2_dir, runs_dir, overrides=None,
                     device="cpu", beams_best: int = 3, max_len: int = 40, progress=True, reference: str | None = None,
                     n_boot: int = 2000, controls: Controls = OFF,
                     decoding_grid: dict[str, Controls] | None = None, world: DemoWorld | None = None,
                     ablation: dict[str, Recipe] | None = None, processes: int = 1) -> Comparison:
    """Train (or reuse) each variant, caption the val split greedily, evaluate; plus the untrained
    model, and greedy vs beam for the best variant. Every row carries bootstrap intervals, and paired
    differences against the `reference` variant (the report's setting). Every caption is decoded with
    `controls`; `decoding_grid` (name -> controls) also decodes the best variant greedily with each,
    compared with the first on the same images. On the demo world (`world`) captions are also scored
    against its objects. `ablation` (row name -> `Recipe`) trains the `reference` variant's config under
    other recipes, each compared with the reference on the same images. Every run's validations on its
    held-out training images are the table's learning curves. On the CPU, `processes` > 1 trains that
    many runs at once (`train_jobs`)."""
    m = manifest_for(assets)
    clip = load_clip(m.clip, device)
    p2_dir, runs_dir = Path(p2_dir), Path(runs_dir)
    val = read_caption_file(p2_dir / "val.json", p2_dir / "images" / "val")
    paths = [im.path for im in val.images]

    def caption_and_score(model, beams=1, how=controls):
        preds = caption_folder(model, m, paths, Decoding(beams, max_len, controls=how), device, progress)
        return preds, score_predictions(preds, p2_dir, m, clip, device, world)

    jobs = [TrainJob(name, str(config), p2_dir, runs_dir / name, dict(overrides or {}))
            for name, config in variants.items()]
    jobs += [TrainJob(name, str(variants[reference]), recipe.p2_dir, runs_dir / "ablation" / slug(name),
                      dict(overrides or {}) | recipe.overrides) for name, recipe in (ablation or {}).items()]
    summaries = train_jobs(jobs, assets, device, processes)

    preds, sc = caption_and_score(load_run(None, m, device))
    rows = [VariantRow("untrained", sc["CIDEr"], sc["CLIPScore"])]
    scored, preds_by = {"untrained": sc}, {"untrained": preds}
    evaluated = []
    for i, job in enumerate(jobs, 1):
        t0 = time.time()
        model = load_run(job.out, m, device)
        preds = write_val_predictions(model, job.out, m, paths, device, max_len, progress, controls)
        sc = score_predictions(preds, job.p2_dir, m, clip, device, world)
        evaluated.append((VariantRow(job.name, sc["CIDEr"], sc["CLIPScore"], model.config.peft,
                                     summaries[job.name]["parameters"]["trainable"], str(job.out)), sc))
        print(f"[evaluate {i}/{len(jobs)}] {job.name}: CIDEr {sc['CIDEr']:.3f} CLIPScore {sc['CLIPScore']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
        key = job.name if i <= len(variants) else f"recipe: {job.name}"
        scored[key], preds_by[key] = sc, preds
    rows += [r for r, _ in evaluated[:len(variants)]]
    ref = scored.get(reference) if reference else None
    rows = [with_intervals(r, scored[r.variant], ref, n_boot) for r in rows]
    trained = [r for r in rows if r.run]
    best = max(trained, key=lambda r: r.CIDEr) if trained else None
    beam = None
    if best is not None and beams_best > 1:
        preds, sc = caption_and_score(load_run(best.run, m, device), beams_best)
        beam = with_intervals(VariantRow(best.variant, sc["CIDEr"], sc["CLIPScore"], best.peft, best.trainable, best.run,
                                         beams_best), sc, scored[best.variant], n_boot)
        preds_by[f"{best.variant} (beam {beams_best})"] = preds
    decoding = []
    if best is not None and decoding_grid:
        model, first = load_run(best.run, m, device), None
        for name, how in decoding_grid.items():
            # the best variant's own greedy captions were decoded with `controls` already
            preds, sc = (preds_by[best.variant], scored[best.variant]) if how == controls else caption_and_score(
                model, 1, how)
            first = first or sc
            decoding.append(with_intervals(VariantRow(f"{best.variant}, {name}", sc["CIDEr"], sc["CLIPScore"], best.peft,
                                                      best.trainable, best.run), sc, first, n_boot))
    ablated = [with_intervals(r, sc, ref, n_boot) for r, sc in evaluated[len(variants):]]
    curves = {r.variant: validation_curve(r.run) for r in rows + ablated if r.run}
    table = VariantTable(rows, best, beam, reference if ref else None, decoding=decoding, ablation=ablated,
                         curves=curves)
    return Comparison(table, preds_by, val.references(), {im.key: str(im.path) for im in val.images})


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A row of the mechanism ablation: the reference variant trained on other captions or settings."""
    p2_dir: Path  # the p2_data/ whose captions it trains on (images the same as the report's)
    overrides: dict[str, str]  # [train] settings that differ from the variant's config


def caption_order_world(world: DemoWorld, out_dir, order: str) -> Path:
    """The demo world `world` written again with captions in another `order` (the same images and
    objects), into `out_dir` unless it is there already; returns its hw3_data/ folder. A folder there that
    is another world's (its objects differ: the orders share every random draw) is written anew."""
    import shutil

    out = Path(out_dir)
    mine = (out / "DEMO.json").is_file() and (out / "p2_data" / "boxes.json").is_file() and \
        (out / "p2_data" / "boxes.json").read_bytes() == (world.root / "p2_data" / "boxes.json").read_bytes()
    if not mine:
        if out.exists():
            shutil.rmtree(out)
        write_demo_world(out, seed=world.seed, size=world.size, progress=False, caption_order=order)
    return out
