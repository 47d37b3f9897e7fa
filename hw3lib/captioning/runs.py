"""One captioner run: its manifest, training (or reuse) into a run folder, loading it back, captioning
images with it, and reading its log (the learning curves)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from ..core.data import read_caption_file
from ..core.device import resolve_device
from ..core.distributed import processes, worker_pool
from ..core.errors import HW3Error, first_line
from ..core.files import atomic_write_json, read_json, run_lock
from ..core.manifest import MANIFEST_PARTS, ClipSpec, DecoderSpec, check_files, load_manifest
from ..core.precision import choose_precision, store_frozen
from ..core.results import CurvePoint, RunSummary, Validation
from ..demo.world import DemoWorld
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
from ..models.decoding import GREEDY, Decoding, caption_images
from ..models.loading import encoder_data_config, encoder_transform, load_tokenizer
from ..models.memory import check_fits, plan_run, usable_gpu_bytes
from ..training.config import load_config
from ..training.feature_cache import FeatureCache, FeatureSource, encoder_fingerprint, weights_digest
from ..training.loop import HeldOut, Objects, augmentation_transform, caption_data, fit, seed_everything
from ..training.mirror import parse_swaps
from ..training.runfolder import ENCODER_DIGEST, RunFolder, changed_inputs, input_fingerprint, same_settings
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
              reuse: bool = True, force_new: bool = False) -> RunSummary:
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
    if cfg.unlikelihood > 0 and objects is None:
        raise HW3Error(f"{p2_dir / 'boxes.json'}: unlikelihood={cfg.unlikelihood} needs the object words behind the "
                       "captions (the demo world's boxes.json); set it to 0 for this data")
    if cfg.attention_supervision > 0 and objects is None:
        raise HW3Error(f"{p2_dir / 'boxes.json'}: attention_supervision={cfg.attention_supervision} needs the objects "
                       "behind the captions (the demo world's boxes.json); set it to 0 for this data")
    if reuse and not force_new and (out / "summary.json").is_file() and (out / "config.json").is_file():
        done = read_json(out / "config.json")
        if not same_settings(done.get("captioner"), cap_cfg) or not same_settings(done.get("train"), cfg):
            raise HW3Error(f"{out}: holds a finished run with another configuration (remove that folder to retrain, "
                           "or choose another)")
        changed = changed_inputs(done.get("inputs"), inputs)
        if changed:
            raise HW3Error(f"{out}: holds a finished run of other inputs ({', '.join(changed)} changed; remove that "
                           "folder to retrain, or choose another)")
        return RunSummary.from_json(read_json(out / "summary.json"), str(out / "summary.json"))
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
    mirror = parse_swaps(cfg.flip_swaps, "[train] flip_swaps") if cfg.hflip > 0 else None
    train = caption_data(train_cs, tok, cfg.max_caption_tokens,
                         objects if cfg.attention_supervision > 0 or cfg.unlikelihood > 0 else None, mirror)
    select = caption_data(select_cs, tok, cfg.max_caption_tokens, objects)
    eval_tf = encoder_transform(model.encoder)
    cache = None
    if cfg.feature_cache:
        root = Path(cfg.cache_dir) if cfg.cache_dir else out.parent / "feature-cache"
        cache = FeatureCache(root, encoder_fingerprint(m.encoder, encoder_data_config(model.encoder),
                                                       model.encoder_dtype(), digests=root / "weights-digests.json"))
    train_tf = augmentation_transform(eval_tf, cfg.color_jitter) if cfg.augment else eval_tf
    train_src = FeatureSource(model, train.paths, train_tf, None if cfg.augment else cache, dev,
                              [train.mirrored(i) for i in range(len(train.paths))])
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
        return fit(model, train, cfg, out, train_src, HeldOut(select, select_src, validator), precision, inputs)
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
    check_encoder(checkpoint, info["meta"].get(ENCODER_DIGEST), manifest)
    model = build_captioner(manifest, cfg, device, precision=precision)
    have = asdict(model.decoder.config)
    differ = [f"{k} {info['decoder'][k]} in the checkpoint, {have[k]} in {manifest.decoder.weights}"
              for k in ("n_layer", "n_head", "n_embd", "vocab_size") if k in info["decoder"] and info["decoder"][k] != have[k]]
    if differ:
        raise HW3Error(f"{checkpoint}: trained with another decoder ({'; '.join(differ)})")
    model.load_trainable(tensors, str(checkpoint))
    return store_all(model, precision).eval()


def check_encoder(checkpoint, trained_on: str | None, manifest) -> None:
    """Refuse a checkpoint trained on other encoder weights than the manifest's: its cross-attention would
    read tokens it never saw, and caption without a word of warning. (Older checkpoints, and encoders
    named by a hub tag alone, record no digest: nothing to check.)"""
    path = manifest.encoder.checkpoint if manifest.encoder is not None else None
    if not isinstance(trained_on, str) or path is None:
        return
    have = weights_digest(path)
    if have != trained_on:
        raise HW3Error(f"{checkpoint}: trained on other encoder weights (sha256 {trained_on[:12]}...) than {path} "
                       f"({have[:12]}...): load it with the asset manifest it was trained with")


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


def write_val_predictions(model, run, manifest, paths, device="cpu", decoding: Decoding = GREEDY,
                          progress=False) -> dict[str, str]:
    """Captions of the val images by a run's model (`decoding`: greedy, its controls, images decoded together),
    kept as RUN/val_predictions.json (the course's prediction format, so `hw3 evaluate` reads it)."""
    preds = caption_folder(model, manifest, paths, decoding, device, progress)
    atomic_write_json(Path(run) / "val_predictions.json", preds)
    return preds


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One run of a comparison: `train_run(config, assets, p2_dir, out, overrides)`."""
    name: str  # the row it makes
    config: str  # TOML file
    p2_dir: Path
    out: Path  # run folder
    overrides: dict[str, str]
    assets: str | None = None  # its own asset manifest (another encoder); None: the comparison's


def slug(name: str) -> str:
    """A folder name for a row name: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclasses.dataclass(frozen=True)
class Captioning:
    """The images every run of `train_jobs` captions as soon as it is trained, in the process that trained it
    (so that captioning runs in parallel too), and how."""
    paths: tuple[Path, ...]  # image files (the val split)
    decoding: Decoding = GREEDY  # how: greedy, its length, controls and images decoded together


@dataclasses.dataclass(frozen=True)
class Trained:
    """A job of `train_jobs`, done."""
    summary: RunSummary
    peft: str  # its PEFT kind
    predictions: dict[str, str] | None  # image key -> caption (RUN/val_predictions.json); None: not captioned


def train_and_caption(job: TrainJob, assets, device="cpu", captioning: Captioning | None = None) -> Trained:
    """Train (or reuse) `job`'s run, then caption `captioning`'s images with its best checkpoint."""
    manifest = job.assets or assets
    summary = train_run(job.config, manifest, job.p2_dir, job.out, job.overrides, device)
    peft = load_config(job.config, job.overrides)[0].peft
    if captioning is None:
        return Trained(summary, peft, None)
    m = manifest_for(manifest)
    preds = write_val_predictions(load_run(job.out, m, device), job.out, m, captioning.paths, device,
                                  captioning.decoding)
    return Trained(summary, peft, preds)


def train_jobs(jobs: list[TrainJob], assets, device="cpu", processes: int = 1,
               captioning: Captioning | None = None) -> dict[str, Trained]:
    """Train (or reuse) every job, each then captioning `captioning`'s images; what each did, by name. With
    `processes` > 1 on the CPU, that many jobs run at once in their own processes, one thread each, in the
    order given (put the longest first): the small matrices of a tiny decoder keep two cores busier that way
    than one run with two threads (bench/bench_train_processes.py measures it). A run's numbers depend on
    its thread count, so a comparison trains all of its runs the same way."""
    def announce(i, job):
        print(f"[train {i}/{len(jobs)}] {job.name}: training (or reusing) {job.out}", flush=True)

    if processes <= 1 or resolve_device(device).type != "cpu":
        out = {}
        for i, job in enumerate(jobs, 1):
            announce(i, job)
            out[job.name] = train_and_caption(job, assets, device, captioning)
        return out
    with worker_pool(processes, threads=1) as pool:
        futures = {}
        for i, job in enumerate(jobs, 1):
            announce(i, job)
            futures[job.name] = pool.submit(train_and_caption, job, assets, device, captioning)
        return {name: f.result() for name, f in futures.items()}


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
    log = Path(run_dir, "log.jsonl")
    return [Validation.from_json(e["validation"], f"{log}: a validation").curve_point()
            for e in run_log(run_dir) if "validation" in e]


@dataclasses.dataclass(frozen=True)
class TrainingCurves:
    """A run's log.jsonl as curves: the training loss per logged step, and each validation."""
    steps: list[int]  # logged optimiser steps
    loss: list[float]  # the teacher-forced training loss there
    validations: list[Validation]  # in step order


def training_curves(run_dir) -> TrainingCurves:
    """Loss points and validations of a run's log.jsonl (a validation that does not fit is named)."""
    log = Path(run_dir, "log.jsonl")
    entries = run_log(run_dir)
    losses = [e for e in entries if "loss" in e]
    return TrainingCurves([e["step"] for e in losses], [e["loss"] for e in losses],
                          [Validation.from_json(e["validation"], f"{log}: a validation") for e in entries if "validation" in e])
