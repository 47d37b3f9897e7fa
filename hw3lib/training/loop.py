"""Training the captioner: teacher forcing in the course layout, AdamW + warm-up + cosine annealing,
gradient accumulation and clipping, autocast on GPU, an encoder-feature cache, JSONL logs, periodic
validation, best-checkpoint selection, exact resume, and DDP under torchrun.

The run folder (`--out RUN_DIR`) and its files belong to `runfolder.RunFolder`.

Resume: the data order of every epoch is a permutation drawn from (seed, epoch), so the state is the
optimiser, the scheduler step, the RNG state and the position inside the epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..core.data import CaptionSet
from ..core.distributed import processes
from ..core.errors import HW3Error
from ..core.files import fault_point
from ..core.optimizers import adamw
from ..core.precision import Precision, choose_precision
from ..core.progress import progress
from ..core.results import RunSummary
from ..core.tokenizer import teacher_forcing_batch
from ..demo.world import Obj, boxes_for
from ..models.captioner import Captioner, check_budget, format_report, parameter_report
from ..models.packing import Packing
from . import attention_losses as att_losses
from .attention_targets import CaptionGrounding, caption_targets
from .config import TrainConfig
from .feature_cache import FeatureSource
from .mirror import mirror_box, swap_words
from .runfolder import ENCODER_DIGEST, RunFolder, changed_inputs, config_changes, config_key
from .unlikelihood import unlikelihood, word_end_tokens

# ----------------------------------------------------------------------------------------------
# data


@dataclass
class CaptionData:
    paths: list[Path]  # images that have captions (then, with a mirrored half, the same again)
    references: list[list[str]]  # their captions, as text
    pairs: list[tuple[int, list[int]]]  # (image index, caption token ids)
    eot: int  # start / end / pad token
    grounding: CaptionGrounding | None = None  # the objects behind the captions, where boxes are known
    nouns: torch.Tensor | None = None  # (K,) the tokens that end an object word, where objects are known
    mirrored_from: int = 0  # > 0: pairs (and images) from this index on are the mirrored twins of those before

    @property
    def originals(self) -> int:
        """The (image, caption) pairs as the data has them (without their mirrored twins)."""
        return self.mirrored_from or len(self.pairs)

    def mirrored(self, image: int) -> bool:
        """Is image index `image` a mirrored twin (the file flipped left to right)?"""
        return bool(self.mirrored_from) and image >= len(self.paths) // 2


@dataclass(frozen=True)
class Objects:
    """What an image's objects are, for captions whose objects are known (the demo world's boxes.json)."""
    boxes: dict[str, tuple[Obj, ...]]  # boxes.json: "split/name" -> objects
    shapes: tuple[str, ...]  # the object words
    colors: tuple[str, ...]
    split: str  # the split the captions come from


def caption_data(cs: CaptionSet, tokenizer, max_tokens: int, objects: Objects | None = None,
                 mirror: tuple[tuple[str, str], ...] | None = None) -> CaptionData:
    """Captions as token ids in the course's layout; with `objects`, also where each phrase naming an
    object sits and which object it names (`attention_targets`). With `mirror` (word pairs), every image
    and caption gets a mirrored twin after the originals: the image flipped left to right, its captions'
    pair words swapped, its boxes mirrored (`mirror.py`), for a flip augmentation that keeps captions true."""
    images = [im for im in cs.images if cs.captions.get(im.id)]
    refs = [list(cs.captions[im.id]) for im in images]
    if mirror is not None:
        refs = refs + [[swap_words(c, mirror) for c in r] for r in refs]
    paths = [im.path for im in images] * (2 if mirror is not None else 1)
    caps = [(i, c) for i, r in enumerate(refs) for c in r]
    encoded = tokenizer.encode_with_offsets([c for _, c in caps])
    data = CaptionData(paths, refs, [(i, t[: max_tokens - 1]) for (i, _), (t, _) in zip(caps, encoded, strict=True)],
                       tokenizer.eot_id, mirrored_from=len(caps) // 2 if mirror is not None else 0)
    if objects is not None:
        objs = [boxes_for(im.path.name, objects.boxes, objects.split) for im in images]
        sides = [image_side(im.path) for im in images]
        if mirror is not None:
            objs += [tuple(replace(o, box=mirror_box(o.box, side)) for o in os_) for os_, side in zip(objs, sides,
                                                                                                          strict=True)]
            sides += sides
        targets = [caption_targets(c, offsets, objs[i], objects.shapes, objects.colors, max_tokens - 1)
                   for (i, c), (_, offsets) in zip(caps, encoded, strict=True)]
        data.grounding = CaptionGrounding(objs, sides, targets)
        data.nouns = word_end_tokens(tokenizer, objects.shapes)
    return data


def image_side(path: Path) -> int:
    """The longer side of an image, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return max(im.size)


def augmentation_transform(base, jitter: float):
    """PIL-level colour jitter in front of the encoder's own (eval) transform. (Flips are the data's: an
    image is flipped together with its caption and boxes, `caption_data(mirror=...)` and `epoch_order`.)"""
    import torchvision.transforms as T

    extra = []
    if jitter > 0:
        extra.append(T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return T.Compose(extra + list(base.transforms))


# ----------------------------------------------------------------------------------------------
# the loop


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine annealing down to `floor` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """The training schedule: warm-up to cfg.lr, cosine down to cfg.eta_min."""
    return cosine_lr(step, total, cfg.lr, cfg.warmup_steps, cfg.eta_min)


def _teacher_forced(model, feats, pairs, eot, max_len, autocast, need_weights: bool = False):
    """(mean per-token cross-entropy, targets (B, T), per-layer cross-attention or None, the real tokens'
    logits (N, V), their `Packing`). Only the real tokens run through the per-token layers (`packing.py`)."""
    x, y = teacher_forcing_batch([t for _, t in pairs], eot, max_len)
    x, y = x.to(feats.device), y.to(feats.device)
    packing = Packing.of(y != -100)
    with autocast():
        out = model(feats, x, need_weights=need_weights, packing=packing)
    logits, atts = out if need_weights else (out, None)
    return F.cross_entropy(logits.float(), packing.pack(y)), y, atts, logits, packing


def batch_loss(model, feats, pairs, eot, max_len, autocast) -> torch.Tensor:
    """The captions' mean per-token cross-entropy under teacher forcing."""
    return _teacher_forced(model, feats, pairs, eot, max_len, autocast)[0]


def needs_maps(cfg: TrainConfig) -> bool:
    """Does the objective read the cross-attention (a coverage loss or attention supervision)?"""
    return cfg.coverage != "off" or cfg.attention_supervision > 0


def training_loss(model, feats, pairs, data: CaptionData, cfg: TrainConfig, autocast,
                  captions: list[int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """`batch_loss` plus the terms `cfg` asks for, on the same forward pass: unlikelihood against
    re-naming an object (`unlikelihood`, with `data.nouns`) and the attention terms (`attention_losses`;
    `data.grounding` and the pairs' indices `captions` give the boxes supervision needs). Returns (loss,
    each term's value)."""
    ce, y, atts, logits, packing = _teacher_forced(model, feats, pairs, data.eot, cfg.max_caption_tokens, autocast,
                                                   needs_maps(cfg))
    loss, parts = ce, {"ce": ce.item()}
    if cfg.unlikelihood > 0:
        term = unlikelihood(packing.unpack(logits), y, data.nouns)  # (B, T, V): zeros at the padding, never a candidate
        loss, parts["unlikelihood"] = loss + cfg.unlikelihood * term, term.item()
    if atts is None:
        return loss, parts
    grounding = data.grounding
    att = att_losses.mean_map(atts)  # (B, T, S)
    if cfg.coverage != "off":
        term = (att_losses.coverage if cfg.coverage == "see" else att_losses.doubly_stochastic)(att, y != -100)
        loss, parts["coverage"] = loss + cfg.coverage_weight * term, term.item()
    if cfg.attention_supervision > 0:
        where, inside, _ = grounding.batch(captions, [p[0] for p in pairs], y.shape[1], att.shape[-1])
        term = att_losses.supervision(att, where.to(att.device), inside.to(att.device))
        loss, parts["supervision"] = loss + cfg.attention_supervision * term, term.item()
    return loss, parts


@torch.no_grad()
def validation_loss(model, source: FeatureSource, data: CaptionData, cfg: TrainConfig, autocast) -> float:
    model.eval()
    keep = set(range(min(cfg.select_images, len(data.paths))))
    pairs = [p for p in data.pairs if p[0] in keep]
    total, count = 0.0, 0
    for i in range(0, len(pairs), 64):
        chunk = pairs[i:i + 64]
        feats = source([p[0] for p in chunk])
        n_tokens = sum(len(t) + 1 for _, t in chunk)
        total += batch_loss(model, feats, chunk, data.eot, cfg.max_caption_tokens, autocast).item() * n_tokens
        count += n_tokens
    model.train()
    return total / max(count, 1)


@dataclass(frozen=True)
class Plan:
    micro_per_epoch: int  # micro-batches per epoch on each rank
    steps_per_epoch: int  # optimiser steps per epoch
    total: int  # optimiser steps of the whole run
    val_every: int  # steps between validations (and saves)


def plan(n_pairs: int, cfg: TrainConfig, world: int) -> Plan:
    micro = n_pairs // (cfg.batch_size * world)
    if micro < 1:
        raise HW3Error(f"{n_pairs} training pairs are fewer than one batch of {cfg.batch_size * world}")
    if cfg.grad_accum > micro:
        raise HW3Error(f"grad_accum={cfg.grad_accum}: an epoch has only {micro} micro-batches of {cfg.batch_size} "
                       f"({n_pairs} pairs); at most grad_accum={micro}")
    per_epoch = max(1, micro // cfg.grad_accum)
    total = per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, per_epoch * cfg.epochs)
    return Plan(micro, per_epoch, total, cfg.val_every or per_epoch)


@dataclass(frozen=True)
class HeldOut:
    """The images a run validates on (never trained on), where their encoder tokens come from, and what a
    validation measures there beside the teacher-forced loss (`selection.selection_validator`)."""
    data: CaptionData | None = None  # None: no val_loss
    source: FeatureSource | None = None  # indices -> (B, S, E) encoder tokens of `data`
    validator: Callable[[Captioner], dict] | None = None  # None: the best checkpoint by val_loss


NO_HELD_OUT = HeldOut()


class Trainer:
    """One training run in named steps: restore, step, validate, select_best, save. `fit` drives it."""

    def __init__(self, model: Captioner, train: CaptionData, cfg: TrainConfig, folder: RunFolder,
                 train_source: FeatureSource, held: HeldOut = NO_HELD_OUT, precision: Precision | None = None,
                 inputs: dict | None = None):
        self.model, self.train, self.cfg, self.folder = model, train, cfg, folder
        self.val, self.val_source, self.validator = held.data, held.source, held.validator
        self.inputs = inputs or {}  # the fingerprint of what the run reads (runfolder.input_fingerprint)
        self.train_source = train_source
        procs = processes()
        self.rank, self.world, self.master_process = procs.rank, procs.world, procs.master_process
        self.device = next(p for p in model.parameters() if p.requires_grad).device
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        check_budget(model, cfg.max_trainable)
        self.report = parameter_report(model)
        self.opt = adamw(self.trainable, cfg.lr, cfg.weight_decay)
        self.precision = precision or choose_precision(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None
        self.net = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.plan = plan(train.originals, cfg, self.world)
        # since_best: validations since the last new best; stopped: early stopping ended the run (cfg.patience)
        self.state = {"step": 0, "epoch": 0, "micro": 0, "best": None, "best_step": None, "since_best": 0,
                      "stopped": False}
        # the metric that picks the best checkpoint: the validator's (CIDEr, higher is better) or val_loss
        self.metric = cfg.select_metric if self.validator is not None else "val_loss"

    def autocast(self):
        return self.precision.autocast()

    def restore(self) -> None:
        """Continue from the folder's resume state, if it has one for this configuration."""
        ck = self.folder.read_resume()
        if ck is None:
            return
        changes = config_changes(ck.get("config"), self.model.config, self.cfg)
        if changes:
            raise HW3Error(f"{self.folder.resume_path}: run folder holds a run with another configuration "
                           f"({changes}; use a new --out, or --force-new to start over)")
        changed = changed_inputs(ck.get("inputs"), self.inputs)
        if changed:
            raise HW3Error(f"{self.folder.resume_path}: the run's inputs changed since it started ({', '.join(changed)}); "
                           "resuming would mix two runs (use a new --out, or --force-new to start over)")
        self.model.load_trainable(ck["trainable"], str(self.folder.resume_path))
        self.opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        self.state.update(ck["state"])
        if self.master_process:
            s = self.state
            print(f"resuming at step {s['step']} (epoch {s['epoch']}, batch {s['micro']})", flush=True)

    def epoch_order(self) -> torch.Tensor:
        """(micro-batches, batch) pair indices of the current epoch for this rank: a permutation drawn
        from (seed, epoch) alone, so a resumed run sees the same batches."""
        cfg, p = self.cfg, self.plan
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + self.state["epoch"])
        order = torch.randperm(self.train.originals, generator=g)[: p.micro_per_epoch * cfg.batch_size * self.world]
        if self.train.mirrored_from:  # each pair shown mirrored with probability hflip (its twin's index)
            order = order + self.train.mirrored_from * (torch.rand(order.shape, generator=g) < cfg.hflip).long()
        return order.view(p.micro_per_epoch, self.world, cfg.batch_size)[:, self.rank]

    def step(self, order: torch.Tensor) -> dict:
        """One optimiser step over cfg.grad_accum micro-batches; returns its log entry."""
        cfg, state = self.cfg, self.state
        self.opt.zero_grad(set_to_none=True)
        loss_sum, terms = 0.0, {}
        for _ in range(cfg.grad_accum):
            captions = order[state["micro"]].tolist()
            pairs = [self.train.pairs[i] for i in captions]
            feats = self.train_source([p[0] for p in pairs])
            loss, parts = training_loss(self.net, feats, pairs, self.train, cfg, self.autocast, captions)
            loss = loss / cfg.grad_accum
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v / cfg.grad_accum
            if not torch.isfinite(loss):
                kept = self.folder.checkpoint("last")
                raise HW3Error(f"non-finite loss ({loss.item()}) at step {state['step']}: training stopped; "
                               f"last good checkpoint kept at {kept if kept.exists() else 'none (no save yet)'}")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.item()
            state["micro"] += 1
        lr = lr_at(state["step"], self.plan.total, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.scaler:
            self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip) if cfg.grad_clip > 0 else None
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        state["step"] += 1
        fault_point("step")
        terms = terms if len(terms) > 1 else {}  # the loss is the cross-entropy alone
        return {"step": state["step"], "epoch": state["epoch"], "loss": loss_sum, "lr": lr,
                "grad_norm": None if gnorm is None else float(gnorm)} | terms

    def validate(self) -> dict:
        """val_loss on the held-out images (the first cfg.select_images), plus the validator's metrics (CIDEr)."""
        result = {"step": self.state["step"], "epoch": self.state["epoch"]}
        if self.val is not None and self.val_source is not None:
            result["val_loss"] = validation_loss(self.model, self.val_source, self.val, self.cfg, self.autocast)
        fault_point("validation")
        if self.validator is not None:
            self.model.eval()
            with self.autocast():
                result.update(self.validator(self.model))
            self.model.train()
        if self.master_process:
            print("validation " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in result.items()), flush=True)
        return result

    def select_best(self, result: dict) -> bool:
        """Is this validation the best so far? (CIDEr: higher; val_loss: lower.) Updates the state."""
        value = result.get(self.metric)
        if value is None:
            value = result.get("val_loss")
        higher = self.metric == "cider" and self.validator is not None
        best = self.state["best"]
        better = value is not None and (best is None or (value > best if higher else value < best))
        if better:
            self.state["best"], self.state["best_step"] = value, self.state["step"]
        self.state["since_best"] = 0 if better else self.state.get("since_best", 0) + 1
        self.folder.log({"validation": result, "best": self.state["best"]})
        return better

    def save(self, kind: str) -> None:
        """checkpoint-{kind}.safetensors; "last" also writes resume.pt."""
        s = self.state
        meta = {"step": s["step"], "epoch": s["epoch"], "best": s["best"]}
        if ENCODER_DIGEST in self.inputs:  # the encoder it trained on, by content (`captioning.runs.load_run`)
            meta[ENCODER_DIGEST] = self.inputs[ENCODER_DIGEST]
        self.folder.save_checkpoint(kind, self.model, meta)
        if kind == "last" and self.folder.writer:  # other ranks would build the state for nothing
            self.folder.save_resume({"trainable": self.model.trainable_state_dict(), "optimizer": self.opt.state_dict(),
                                     "torch_rng": torch.get_rng_state(), "state": dict(s),
                                     "config": config_key(self.model, self.cfg), "inputs": self.inputs})

    def finished(self) -> bool:
        """Has the run trained all its steps, or stopped early (its held-out curve stopped rising)?"""
        return self.state["step"] >= self.plan.total or self.state.get("stopped", False)

    def run_epoch(self, bar, t0: float) -> bool:
        """Steps until the epoch ends or the run does; True when the run is done."""
        cfg, state, p = self.cfg, self.state, self.plan
        order = self.epoch_order()
        while state["micro"] < p.steps_per_epoch * cfg.grad_accum:
            entry = self.step(order)
            bar.update()
            bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry['lr']:.2e}", refresh=False)
            if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                self.folder.log(entry)
                self.folder.timing({"step": state["step"], "seconds": round(time.time() - t0, 2)})
            epoch_done = state["micro"] >= p.steps_per_epoch * cfg.grad_accum
            if epoch_done:  # saved state points at the start of the next epoch
                state["epoch"], state["micro"] = state["epoch"] + 1, 0
            at_end = state["step"] >= p.total
            if state["step"] % p.val_every == 0 or at_end:
                if self.select_best(self.validate()):
                    self.save("best")
                if cfg.patience and state["since_best"] >= cfg.patience and not at_end:
                    state["stopped"] = at_end = True
                    if self.master_process:
                        print(f"early stop at step {state['step']}: {cfg.patience} validations without a new best "
                              f"(best at step {state['best_step']})", flush=True)
                self.save("last")
                if self.world > 1:
                    dist.barrier()
            if at_end or epoch_done:
                return at_end
        return False


def fit(model: Captioner, train: CaptionData, cfg: TrainConfig, run_dir: str | os.PathLike,
        train_source: FeatureSource, held: HeldOut = NO_HELD_OUT, precision: Precision | None = None,
        inputs: dict | None = None) -> RunSummary:
    """Train `model` in place, resuming what `run_dir` holds; returns the final summary. Rank 0 writes
    every file."""
    folder = RunFolder(run_dir, writer=processes().master_process)
    t = Trainer(model, train, cfg, folder, train_source, held, precision, inputs)
    t.restore()
    folder.start({"captioner": asdict(model.config), "train": asdict(cfg), "parameters": t.report,
                  "world_size": t.world, "precision": t.precision.describe(), "inputs": t.inputs,
                  "validated_on": [p.name for p in held.data.paths] if held.data is not None else []}, t.state["step"])
    model.train()
    if model.encoder is not None:
        model.encoder.eval()
    bar = progress(total=t.plan.total, initial=t.state["step"], desc="training", dynamic_ncols=True,
                   shown=t.master_process)
    t0 = time.time()
    try:
        done = t.finished()
        while not done and t.state["epoch"] < cfg.epochs:
            done = t.run_epoch(bar, t0)
    finally:
        bar.close()
    s = t.state
    summary = RunSummary(s["step"], s["best"], s["best_step"], t.report, s.get("stopped", False))
    folder.timing({"step": s["step"], "seconds": round(time.time() - t0, 1), "finished": True})
    folder.finish(summary.to_json())
    if t.master_process:
        print(f"done: {s['step']} steps; best {t.metric} {s['best']} at step {s['best_step']}; "
              f"{format_report(t.report)}", flush=True)
    return summary


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
