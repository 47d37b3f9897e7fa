"""Whole P2 steps as library calls, shared by the `hw3` commands and the notebooks: train a run from a
config (cached), caption images with a run, evaluate predictions, and the PEFT comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..core.data import read_caption_file
from ..core.device import resolve_device
from ..core.distributed import processes
from ..core.errors import HW3Error, first_line
from ..core.files import atomic_write_json, read_json, run_lock
from ..core.images import list_images, open_image
from ..core.manifest import MANIFEST_PARTS, ClipSpec, DecoderSpec, check_files, load_manifest
from ..core.precision import choose_precision, store_frozen
from ..core.results import METRICS, CurvePoint, Share, VariantRow, VariantTable
from ..demo.world import DemoWorld, boxes_for, write_demo_world
from ..metrics import stats
from ..metrics.captions import evaluate, java_available
from ..metrics.grounding import grounding
from ..metrics.objects import HEADLINE as OBJECT_HEADLINE
from ..metrics.objects import object_counts
from ..metrics.probe import encoder_probes
from ..metrics.relations import relation_counts
from ..models.captioner import (
    CaptionerConfig,
    build_captioner,
    check_budget,
    check_checkpoint_size,
    format_report,
    parameter_report,
    read_checkpoint,
)
from ..models.decoder_file import decoder_config
from ..models.decoding import GREEDY, OFF, Controls, Decoding, caption_images
from ..models.loading import encoder_data_config, encoder_transform, load_clip, load_tokenizer
from ..models.memory import check_fits, plan_run, usable_gpu_bytes
from ..training.config import load_config
from ..training.feature_cache import FeatureCache, FeatureSource, encoder_fingerprint
from ..training.loop import Objects, augmentation_transform, caption_data, fit, image_side, seed_everything
from ..training.runfolder import RunFolder, changed_inputs, input_fingerprint
from ..training.selection import selection_split, selection_validator


def manifest_for(assets, decoder=None, parts=MANIFEST_PARTS, clip_model=None, clip_pretrained=None):
    """The manifest `assets` (a path or 'real') with command-line overrides (decoder weights, CLIP
    model/pretrained), after checking the files of the parts a command uses (and only those)."""
    m = load_manifest(assets)
    if decoder is not None:
        m.decoder = dataclasses.replace(m.decoder, weights=str(decoder)) if m.decoder else DecoderSpec(str(decoder))
    if clip_model:
        m.clip = dataclasses.replace(m.clip, model=clip_model, config=None) if m.clip else ClipSpec(clip_model)
    if clip_pretrained and m.clip is not None:  # without a model (section or --model) there is nothing to load
        m.clip = dataclasses.replace(m.clip, pretrained=clip_pretrained)
    check_files(m, parts)
    return m


def train_run(config, assets, p2_dir, out, overrides: dict | None = None, device: str | None = None,
              reuse: bool = True, force_new: bool = False) -> dict:
    """Train the captioner of `config` on `p2_dir` into `out`. With `reuse`, a finished run with the
    same configuration and inputs is not trained again (its summary is returned); an interrupted one
    resumes, unless its inputs changed (refused). `force_new` discards what the folder holds first.
    The run folder is locked while training: a second `hw3 train` into it refuses."""
    overrides = dict(overrides or {})
    if device is not None:
        overrides.setdefault("device", device)
    cap_cfg, cfg = load_config(config, overrides)
    out, p2_dir = Path(out), Path(p2_dir)
    m = manifest_for(assets, parts=("encoder", "decoder", "tokenizer"))
    inputs = input_fingerprint(m, p2_dir)  # also: the caption files exist
    if len(read_caption_file(p2_dir / "val.json", p2_dir / "images" / "val")) == 0:
        raise HW3Error(f"{p2_dir / 'val.json'}: the val split has no images (hw3 train captions it with the best "
                       "checkpoint, which held-out training images choose)")
    objects = caption_objects(p2_dir, "train")
    if cfg.attention_supervision > 0 and objects is None:
        raise HW3Error(f"{p2_dir / 'boxes.json'}: attention_supervision={cfg.attention_supervision} needs the objects "
                       "behind the captions (the demo world's boxes.json); set it to 0 for this data")
    if reuse and not force_new and (out / "summary.json").is_file() and (out / "config.json").is_file():
        done = read_json(out / "config.json")
        if done.get("captioner") != asdict(cap_cfg) or done.get("train") != asdict(cfg):
            raise HW3Error(f"{out}: holds a finished run with another configuration (remove that folder to retrain, "
                           "or choose another)")
        changed = changed_inputs(done.get("inputs"), inputs)
        if changed:
            raise HW3Error(f"{out}: holds a finished run of other inputs ({', '.join(changed)} changed; remove that "
                           "folder to retrain, or choose another)")
        return read_json(out / "summary.json")
    with run_lock(out) if processes().master_process else contextlib.nullcontext():
        if force_new:
            RunFolder(out).clear()
        return _train_locked(cap_cfg, cfg, m, p2_dir, out, inputs, objects)


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def join_process_group(backend: str, procs, timeout_s: int) -> None:
    """Join a distributed run (torchrun's environment), saying first what it waits for, and giving up
    after `timeout_s` seconds with one line naming the variables (a shell left with RANK / WORLD_SIZE
    set by an earlier torchrun would otherwise wait forever for processes that never come)."""
    import datetime

    import torch.distributed as dist

    env = ", ".join(f"{k}={os.environ[k]}" for k in TORCHRUN_VARIABLES if k in os.environ)
    print(f"distributed run: waiting up to {timeout_s} s for {procs.world} processes ({env})", flush=True)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:  # DistStoreError, a timeout, a missing MASTER_ADDR / MASTER_PORT
        raise HW3Error(f"distributed run: {procs.world} processes did not meet within {timeout_s} s ({env}; "
                       f"{first_line(e, 120)}): start it with torchrun, or unset {' '.join(TORCHRUN_VARIABLES)} "
                       "to train in one process") from e


def _train_locked(cap_cfg, cfg, m, p2_dir: Path, out: Path, inputs: dict, objects: Objects | None) -> dict:
    import torch.distributed as dist

    dev = resolve_device(cfg.device)
    procs = processes()
    if procs.world > 1 and not dist.is_initialized():  # under torchrun: one process per device
        if dev.type == "cuda":
            dev = torch.device("cuda", procs.local_rank)
            torch.cuda.set_device(dev)
        join_process_group("nccl" if dev.type == "cuda" else "gloo", procs, cfg.dist_timeout)
    seed_everything(cfg.seed)
    precision = choose_precision(cfg.amp, dev)
    rank0 = processes().master_process
    block = decoder_config(m.decoder.weights, m.decoder.n_head).block_size
    if cfg.max_caption_tokens + 1 > block:
        raise HW3Error(f"max_caption_tokens={cfg.max_caption_tokens}: the decoder holds {block} positions "
                       f"(at most {block - 1} caption tokens + the start token)")
    plan_memory(m, cap_cfg, cfg, precision, dev, announce=rank0)
    tok = load_tokenizer(m)
    train_cs, select_cs = selection_split(read_caption_file(p2_dir / "train.json", p2_dir / "images" / "train"),
                                          cfg.select_images)
    model = build_captioner(m, cap_cfg, dev, precision=precision)
    if rank0:
        print(f"captioner ({cap_cfg.peft}): {format_report(parameter_report(model))}", flush=True)
        print(f"checkpoint chosen on {len(select_cs)} held-out training images (not trained on); no val image "
              "chooses it", flush=True)
    check_budget(model, cfg.max_trainable)
    train = caption_data(train_cs, tok, cfg.max_caption_tokens, objects if cfg.attention_supervision > 0 else None)
    select = caption_data(select_cs, tok, cfg.max_caption_tokens, objects)
    eval_tf = encoder_transform(model.encoder)
    cache = None
    if cfg.feature_cache:
        root = Path(cfg.cache_dir) if cfg.cache_dir else out.parent / "feature-cache"
        cache = FeatureCache(root, encoder_fingerprint(m.encoder, encoder_data_config(model.encoder),
                                                       model.encoder_dtype(), digests=root / "weights-digests.json"))
    train_tf = augmentation_transform(eval_tf, cfg.hflip, cfg.color_jitter) if cfg.augment else eval_tf
    train_src = FeatureSource(model, train.paths, train_tf, None if cfg.augment else cache, dev)
    select_src = FeatureSource(model, select.paths, eval_tf, cache, dev)
    if cache is not None and rank0:
        if not cfg.augment:
            train_src.fill()
        select_src.fill()
    if dist.is_initialized():
        dist.barrier()
    validator = selection_validator(select, select_src, tok, cfg.max_caption_tokens, controls=cfg.controls,
                                    objects=objects)
    try:
        return fit(model, train, select, cfg, out, train_src, select_src, validator, precision=precision, inputs=inputs)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def plan_memory(manifest, cap_cfg, train_cfg, precision, device, gpu_bytes: int | None = None,
                announce: bool = True):
    """Print the run's precision and memory plan; refuse a run that does not fit the GPU (`device`'s,
    or one of `gpu_bytes`). Builds nothing but meta tensors: this runs before any weight is read."""
    model, plan = plan_run(manifest, cap_cfg, train_cfg, precision)
    if announce:
        print(f"precision: {precision.describe()}", flush=True)
        print(plan.describe(), flush=True)
    if gpu_bytes is None and device.type == "cuda":
        gpu_bytes = torch.cuda.get_device_properties(device).total_memory
    if gpu_bytes is not None:
        check_fits(model, plan, train_cfg, precision, usable_gpu_bytes(gpu_bytes))
    return plan


def caption_objects(p2_dir, split: str) -> Objects | None:
    """The objects behind a split's captions, where they are known (a demo world's p2_data); else None."""
    world = DemoWorld.load(Path(p2_dir).parent)
    if world is None or not world.objects("p2_data"):
        return None
    return Objects(world.objects("p2_data"), world.shapes, world.colors, split)


def load_run(checkpoint, manifest, device="cpu", precision=None):
    """A captioner from a run folder or checkpoint file; None gives the untrained model. With a half
    `precision` (decoding on a GPU) every weight is stored in that dtype once loaded."""
    if checkpoint is None:
        return store_all(build_captioner(manifest, CaptionerConfig(peft="none"), device, precision=precision),
                         precision).eval()
    cfg, tensors, info = read_checkpoint(checkpoint)
    check_checkpoint_size(manifest, cfg, tensors, checkpoint)
    model = build_captioner(manifest, cfg, device, precision=precision)
    have = asdict(model.decoder.config)
    differ = [f"{k} {info['decoder'][k]} in the checkpoint, {have[k]} in {manifest.decoder.weights}"
              for k in ("n_layer", "n_head", "n_embd", "vocab_size") if k in info["decoder"] and info["decoder"][k] != have[k]]
    if differ:
        raise HW3Error(f"{checkpoint}: trained with another decoder ({'; '.join(differ)})")
    model.load_trainable(tensors, str(checkpoint))
    return store_all(model, precision).eval()


def store_all(model, precision=None):
    """For decoding nothing trains: every weight goes to the precision's storage dtype."""
    if precision is None:
        return model
    model.requires_grad_(False)
    return store_frozen(model, precision)


def caption_folder(model, manifest, paths, decoding: Decoding = GREEDY, device="cpu", progress=True,
                   precision=None) -> dict[str, str]:
    tok = load_tokenizer(manifest)
    return caption_images(model, list(paths), tok, encoder_transform(model.encoder), decoding, device, progress,
                          precision=precision)


def write_val_predictions(model, run, manifest, paths, device="cpu", max_len=40, progress=False,
                          controls: Controls = OFF) -> dict[str, str]:
    """Greedy captions of the val images by a run's model (with the decoding `controls`), kept as
    RUN/val_predictions.json (the course's prediction format, so `hw3 evaluate` reads it)."""
    preds = caption_folder(model, manifest, paths, Decoding(max_len=max_len, controls=controls), device, progress)
    atomic_write_json(Path(run) / "val_predictions.json", preds)
    return preds


def default_tokenizer() -> str:
    """The course's PTB tokenizer where Java is installed, else the Java-free equivalent."""
    return "ptb" if java_available() else "python"


def evaluate_predictions(preds, p2_dir, split="val", manifest=None, device="cpu", tokenizer=None, clip=None) -> dict:
    p2_dir = Path(p2_dir)
    cs = read_caption_file(p2_dir / f"{split}.json", p2_dir / "images" / split)
    if clip is None and manifest is not None:
        clip = load_clip(manifest.clip, device)
    return evaluate(preds, cs, clip, tokenizer or default_tokenizer(), device=device)


def clipscore_extremes(model, manifest, p2_dir, limit: int | None = None, device="cpu", clip=None,
                       controls: Controls = OFF) -> dict:
    """Caption the val images (the first `limit` by name), score the captions as the course's evaluator
    does, and name the best and the worst caption by CLIPScore: {"predictions", "per_image", "paths",
    "top-1", "last-1"} (the last two are prediction keys)."""
    p2_dir = Path(p2_dir)
    paths = list_images(p2_dir / "images" / "val")[:limit]
    preds = caption_folder(model, manifest, paths, Decoding(controls=controls), device, progress=False)
    cs = read_caption_file(p2_dir / "val.json", p2_dir / "images" / "val").subset(preds)
    scores = evaluate(preds, cs, clip or load_clip(manifest.clip, device), default_tokenizer(), device=device)
    ranked = sorted(scores["per_image"], key=lambda k: scores["per_image"][k]["CLIPScore"])
    return {"predictions": preds, "per_image": scores["per_image"], "paths": {p.stem: p for p in paths},
            "top-1": ranked[-1], "last-1": ranked[0]}


def score_predictions(preds: dict[str, str], p2_dir, manifest, clip, device="cpu", world: DemoWorld | None = None) -> dict:
    """Everything P2 reports about one set of val captions: CIDEr-D and CLIPScore (the course
    evaluator), per-image arrays in sorted key order for the intervals, and grounding where the
    demo world's objects are known (`world`)."""
    res = evaluate_predictions(preds, p2_dir, manifest=manifest, device=device, clip=clip)
    keys = sorted(res["per_image"])
    out = {"CIDEr": res["CIDEr"], "CLIPScore": res["CLIPScore"],
           "per_image": {m: np.array([res["per_image"][k][m] for k in keys]) for m in METRICS}}
    if world is not None:
        boxes, shapes, colors = world.objects("p2_data"), list(world.shapes), list(world.colors)
        out["grounding"] = grounding(preds, boxes, shapes, colors)
        out["objects"] = object_counts(preds, boxes, shapes, colors)
        out["relations"] = relation_counts(preds, boxes, shapes, colors)
    return out


def with_intervals(row: VariantRow, scored: dict, reference: dict | None, n_boot: int = 2000) -> VariantRow:
    """`row` with 95% bootstrap intervals over images (CIDEr, CLIPScore, grounding shares) and, when a
    reference variant's scores are given, paired bootstrap differences against it on the same images."""
    row = dataclasses.replace(row, ci={m: stats.bootstrap_ci(scored["per_image"][m], n_boot=n_boot) for m in METRICS})
    g, oc = scored.get("grounding"), scored.get("objects")
    if g is not None:
        row.grounding = g.summary(n_boot=n_boot)
    if oc is not None:
        row.objects, row.objects_by_count = oc.summary(n_boot=n_boot), oc.by_object_count(n_boot=n_boot)
    rc = scored.get("relations")
    if rc is not None and rc.checkable.sum() > 0:
        row.relations = Share(rc.accuracy, stats.bootstrap_ci(rc.true, rc.checkable, n_boot=n_boot), int(rc.true.sum()),
                              int(rc.checkable.sum()))
    if reference is not None and reference is not scored:
        paired = {m: stats.paired_bootstrap(reference["per_image"][m], scored["per_image"][m], n_boot=n_boot)
                  for m in METRICS}
        ro = reference.get("objects")
        if oc is not None and ro is not None:
            for m in OBJECT_HEADLINE:
                (na, da), (nb, db) = ro.ratio(m), oc.ratio(m)
                if da.sum() > 0 and db.sum() > 0:  # (a model that names nothing has no precision)
                    paired[m] = stats.paired_bootstrap(na, nb, da, db, n_boot=n_boot)
        rg = reference.get("grounding")
        if g is not None and rg is not None and g.share("mentions") is not None and rg.share("mentions") is not None:
            paired["mentions"] = stats.paired_bootstrap(rg.right["mentions"], g.right["mentions"], rg.total["mentions"],
                                                        g.total["mentions"], n_boot=n_boot)
        rr = reference.get("relations")
        if rc is not None and rr is not None and rc.checkable.sum() > 0 and rr.checkable.sum() > 0:
            paired["relations"] = stats.paired_bootstrap(rr.true, rc.true, rr.checkable, rc.checkable, n_boot=n_boot)
        row.vs_reference = {m: d.reported() for m, d in paired.items()}
    return row


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
class TrainJob:
    """One run of a comparison: `train_run(config, assets, p2_dir, out, overrides)`."""
    name: str  # the row it makes
    config: str  # TOML file
    p2_dir: Path
    out: Path  # run folder
    overrides: dict[str, str]


def slug(name: str) -> str:
    """A folder name for a row name: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _one_thread() -> None:
    torch.set_num_threads(1)


def train_jobs(jobs: list[TrainJob], assets, device="cpu", processes: int = 1) -> dict[str, dict]:
    """Train (or reuse) every job; its summary by name. With `processes` > 1 on the CPU, that many train
    at once in their own processes, one thread each: the small matrices of a tiny decoder keep two
    cores busier that way than one run with two threads (bench/bench_train_processes.py measures it). A run's
    numbers depend on its thread count, so a comparison trains all of its runs the same way."""
    def announce(i, job):
        print(f"[train {i}/{len(jobs)}] {job.name}: training (or reusing) {job.out}", flush=True)

    if processes <= 1 or resolve_device(device).type != "cpu":
        out = {}
        for i, job in enumerate(jobs, 1):
            announce(i, job)
            out[job.name] = train_run(job.config, assets, job.p2_dir, job.out, job.overrides, device)
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP or kernel state
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_one_thread) as pool:
        futures = {}
        for i, job in enumerate(jobs, 1):
            announce(i, job)
            futures[job.name] = pool.submit(train_run, job.config, assets, job.p2_dir, job.out, job.overrides, device)
        return {name: f.result() for name, f in futures.items()}


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


def probe_encoder(assets, data_dir, world: DemoWorld, n_fit: int = 1000, device="cpu") -> list:
    """Linear probes of the frozen encoder's tokens (`metrics.probe`): fitted on the first `n_fit`
    training images, scored on the val images."""
    m = manifest_for(assets, parts=("encoder", "decoder", "tokenizer"))
    model = load_run(None, m, device)
    tf = encoder_transform(model.encoder)
    boxes = world.objects("p2_data")
    tokens, objects = [], []
    for split, limit in (("train", n_fit), ("val", None)):
        paths = list_images(Path(data_dir) / "p2_data" / "images" / split)[:limit]
        feats = [model.encode(torch.stack([tf(open_image(p)) for p in paths[i:i + 64]]).to(device)).cpu()
                 for i in range(0, len(paths), 64)]
        tokens.append(torch.cat(feats))
        objects.append([boxes_for(p.name, boxes, split) for p in paths])
    side = image_side(paths[0])
    return encoder_probes(tokens[0], objects[0], tokens[1], objects[1], side, world.shapes, world.colors)


def run_log(run_dir) -> list[dict]:
    """The entries of a run's log.jsonl."""
    log = Path(run_dir, "log.jsonl")
    out = []
    for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        try:
            e = json.loads(line)
        except json.JSONDecodeError as err:
            raise HW3Error(f"{log}: line {n} is not JSON ({err.msg}); the run folder is damaged") from None
        if not isinstance(e, dict):
            raise HW3Error(f"{log}: line {n} is not a JSON object; the run folder is damaged")
        out.append(e)
    return out


def validation_curve(run_dir) -> list[CurvePoint]:
    """A run's validations on its held-out training images, in step order."""
    fields = {f.name for f in dataclasses.fields(CurvePoint)}
    return [CurvePoint(**{k: v for k, v in e["validation"].items() if k in fields})
            for e in run_log(run_dir) if "validation" in e]


def training_curves(run_dir) -> dict:
    """Loss / learning-rate points and validation points of a run's log.jsonl."""
    steps, losses, val_steps, val_cider, val_loss = [], [], [], [], []
    for e in run_log(run_dir):
        if "loss" in e:
            steps.append(e["step"])
            losses.append(e["loss"])
        elif "validation" in e:
            v = e["validation"]
            val_steps.append(v["step"])
            val_cider.append(v.get("cider"))
            val_loss.append(v.get("val_loss"))
    return {"steps": steps, "loss": losses, "val_steps": val_steps, "val_cider": val_cider, "val_loss": val_loss}
