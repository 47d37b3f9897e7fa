"""Training the captioner: teacher forcing in the course layout, AdamW + warm-up + cosine annealing,
gradient accumulation and clipping, autocast on GPU, an encoder-feature cache, JSONL logs, periodic
validation, best-checkpoint selection, exact resume, and DDP under torchrun.

Run folder (`--out RUN_DIR`):
  config.json                    the full configuration of the run
  log.jsonl                      one line per logged step / validation
  checkpoint-best.safetensors    trainable tensors + model config (what `hw3 caption` loads)
  checkpoint-last.safetensors    the same, at the last save
  resume.pt                      everything needed to continue bit-exactly (weights_only loadable)

Resume: the data order of every epoch is a permutation drawn from (seed, epoch), so the state is the
optimiser, the scheduler step, the RNG state and the position inside the epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .captioner import (
    Captioner,
    CaptionerConfig,
    check_budget,
    format_report,
    parameter_report,
    save_checkpoint,
)
from .data import CaptionSet
from .io import (
    HW3Error,
    atomic_path,
    atomic_write_json,
    fault_point,
    open_image,
    progress_disabled,
    remove_stale_temporaries,
)
from .tokenizer import teacher_forcing_batch


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over every (image, caption) pair
    batch_size: int = 8  # pairs per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 3e-5  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 0  # linear warm-up, in optimiser steps
    eta_min: float = 1e-6  # floor of the cosine annealing
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU) | off | bf16 | fp16
    hflip: float = 0.0  # horizontal-flip probability (augmentation)
    color_jitter: float = 0.0  # colour-jitter strength for brightness/contrast/saturation (0 = off)
    feature_cache: bool = True  # cache frozen encoder tokens on disk (only without augmentation)
    cache_dir: str = ""  # where the cache lives ("" = RUN_DIR/../feature-cache)
    max_caption_tokens: int = 60  # longest caption in tokens (+1 for the end token)
    max_trainable: int = 35_000_000  # refuse to train above this many trainable parameters
    val_every: int = 0  # optimiser steps between validations (0 = once per epoch)
    val_images: int = 100  # val images used for validation loss and metrics
    select_metric: str = "cider"  # best checkpoint by: cider | loss (cider needs a validator)
    max_steps: int = 0  # stop after this many optimiser steps (0 = run all epochs; negative is an error)
    seed: int = 0  # data order, initialisation of new modules
    log_every: int = 10  # optimiser steps between log lines
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        checks = [("lr", self.lr > 0), ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("grad_accum", self.grad_accum >= 1), ("eta_min", 0 <= self.eta_min <= self.lr),
                  ("weight_decay", self.weight_decay >= 0), ("warmup_steps", self.warmup_steps >= 0),
                  ("grad_clip", self.grad_clip >= 0), ("hflip", 0 <= self.hflip <= 1),
                  ("color_jitter", self.color_jitter >= 0), ("max_caption_tokens", self.max_caption_tokens >= 2),
                  ("val_images", self.val_images >= 1), ("max_trainable", self.max_trainable >= 1),
                  ("max_steps", self.max_steps >= 0), ("log_every", self.log_every >= 1),
                  ("val_every", self.val_every >= 0), ("seed", self.seed >= 0),
                  ("amp", self.amp in ("auto", "off", "bf16", "fp16")),
                  ("select_metric", self.select_metric in ("cider", "loss"))]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise HW3Error("invalid training setting(s): " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))

    @property
    def augment(self) -> bool:
        return self.hflip > 0 or self.color_jitter > 0


# ----------------------------------------------------------------------------------------------
# configuration files: TOML with [captioner] and [train] tables, plus --key=value overrides


def _coerce(cls, key: str, value):
    f = next(f for f in fields(cls) if f.name == key)
    kind = type(f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
    if isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if kind is list:
                return [v.strip() for v in value.split(",") if v.strip()]
            return kind(float(value)) if kind is int and "e" in value.lower() else kind(value)
        except ValueError:
            raise HW3Error(f"setting {key}: {value!r} is not a valid {kind.__name__}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not type(value) and not (kind is list and isinstance(value, list)):
        raise HW3Error(f"setting {key}: expected {kind.__name__}, got {type(value).__name__} ({value!r})")
    return value


def settings_table() -> list[tuple[str, str, str, object, str]]:
    """(table, key, type, default, comment) for every [captioner] and [train] setting. The comments are
    read from the dataclasses' source, so `hw3 train --help` cannot drift from the code."""
    import inspect
    import re

    rows = []
    for table, cls in (("captioner", CaptionerConfig), ("train", TrainConfig)):
        comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), flags=re.M))
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((table, f.name, type(default).__name__, default, comments.get(f.name, "")))
    return rows


def config_toml(cap: CaptionerConfig, tr: TrainConfig) -> str:
    """A resolved configuration as a TOML file that `load_config` reads back to the same values."""
    out = []
    for table, cfg in (("captioner", cap), ("train", tr)):
        out.append(f"[{table}]")
        out += [f"{f.name} = {json.dumps(getattr(cfg, f.name))}" for f in fields(cfg)]
        out.append("")
    return "\n".join(out)


def load_config(path: str | os.PathLike | None, overrides: dict[str, str] | None = None,
                ) -> tuple[CaptionerConfig, TrainConfig]:
    """Read a TOML config ([captioner] + [train]) and apply `key=value` overrides; unknown keys,
    wrong types and out-of-range values are errors naming the key."""
    import tomllib

    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise HW3Error(f"{path}: config file not found")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise HW3Error(f"{path}: invalid TOML ({e})") from None
    unknown_tables = set(raw) - {"captioner", "train"}
    if unknown_tables:
        raise HW3Error(f"{path}: unknown table(s) {', '.join(sorted(unknown_tables))} (use [captioner] and [train])")
    for table in ("captioner", "train"):
        if not isinstance(raw.get(table, {}), dict):
            raise HW3Error(f"{path}: [{table}] must be a table of settings, got {type(raw[table]).__name__}")
    values = {"captioner": dict(raw.get("captioner", {})), "train": dict(raw.get("train", {}))}
    names = {"captioner": {f.name for f in fields(CaptionerConfig)}, "train": {f.name for f in fields(TrainConfig)}}
    for table in values:
        unknown = set(values[table]) - names[table]
        if unknown:
            raise HW3Error(f"{path}: unknown key(s) in [{table}]: {', '.join(sorted(unknown))}")
    for key, value in (overrides or {}).items():
        table = next((t for t in names if key in names[t]), None)
        if table is None:
            raise HW3Error(f"unknown setting --{key} (not a [captioner] or [train] key)")
        values[table][key] = value
    cap = {k: _coerce(CaptionerConfig, k, v) for k, v in values["captioner"].items()}
    tr = {k: _coerce(TrainConfig, k, v) for k, v in values["train"].items()}
    return CaptionerConfig(**cap), TrainConfig(**tr)


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class CaptionData:
    paths: list[Path]  # images that have captions
    references: list[list[str]]  # their captions, as text
    pairs: list[tuple[int, list[int]]]  # (image index, caption token ids)
    eot: int  # start / end / pad token


def caption_data(cs: CaptionSet, tokenizer, max_tokens: int) -> CaptionData:
    images = [im for im in cs.images if cs.captions.get(im.id)]
    caps = [(i, c) for i, im in enumerate(images) for c in cs.captions[im.id]]
    ids = tokenizer.encode_batch([c for _, c in caps])
    return CaptionData([im.path for im in images], [list(cs.captions[im.id]) for im in images],
                       [(i, t[: max_tokens - 1]) for (i, _), t in zip(caps, ids, strict=True)], tokenizer.eot_id)


def augmentation_transform(base, hflip: float, jitter: float):
    """PIL-level flip / colour jitter in front of the encoder's own (eval) transform."""
    import torchvision.transforms as T

    extra = []
    if hflip > 0:
        extra.append(T.RandomHorizontalFlip(hflip))
    if jitter > 0:
        extra.append(T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return T.Compose(extra + list(base.transforms))


class FeatureSource:
    """Encoder tokens for image indices: from the feature cache, or live through the encoder."""

    def __init__(self, model: Captioner, paths: list[Path], transform, cache=None, device="cpu"):
        self.model, self.paths, self.transform, self.cache, self.device = model, paths, transform, cache, device
        self.encoder_calls = 0  # images pushed through the encoder (for tests and benchmarks)

    def _encode(self, paths: list[Path]) -> torch.Tensor:
        x = torch.stack([self.transform(open_image(p)) for p in paths]).to(self.device)
        self.encoder_calls += len(paths)
        return self.model.encode(x)

    def fill(self, indices=None, batch_size: int = 32) -> None:
        if self.cache is not None:
            idx = range(len(self.paths)) if indices is None else indices
            self.cache.get([self.paths[i] for i in idx], self._encode, batch_size, progress=True)

    def __call__(self, indices: list[int]) -> torch.Tensor:
        if self.cache is None:
            return self._encode([self.paths[i] for i in indices])
        feats = self.cache.get([self.paths[i] for i in indices], self._encode)
        return torch.stack(feats).to(self.device)


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


def nvidia_gpu_visible() -> bool:
    """An NVIDIA GPU is present on this machine (driver device file, or `nvidia-smi -L` lists one)."""
    import shutil
    import subprocess

    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if nvidia_gpu_visible():
            warnings.warn(f"an NVIDIA GPU is visible but torch {torch.__version__} cannot use it (a CPU-only "
                          "build, or a driver older than its CUDA); running on the CPU. The README's 'Installing "
                          "torch' section says how to get a CUDA build.", stacklevel=2)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HW3Error(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)


def batch_loss(model, feats, pairs, eot, max_len, autocast) -> torch.Tensor:
    x, y = teacher_forcing_batch([t for _, t in pairs], eot, max_len)
    x, y = x.to(feats.device), y.to(feats.device)
    with autocast():
        logits = model(feats, x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)


@torch.no_grad()
def validation_loss(model, source: FeatureSource, data: CaptionData, cfg: TrainConfig, autocast) -> float:
    model.eval()
    keep = set(range(min(cfg.val_images, len(data.paths))))
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


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(model: Captioner, train: CaptionData, val: CaptionData | None, cfg: TrainConfig, run_dir: str | os.PathLike,
        train_source: FeatureSource, val_source: FeatureSource | None = None,
        validator: Callable[[Captioner], dict] | None = None, resume: bool = True) -> dict:
    """Train `model` in place; returns the final summary. Rank 0 writes every file."""
    run_dir = Path(run_dir)
    rank, world = _rank_world()
    device = next(p for p in model.parameters() if p.requires_grad).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    check_budget(model, cfg.max_trainable)
    report = parameter_report(model)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    micro_per_epoch = len(train.pairs) // (cfg.batch_size * world)
    if micro_per_epoch < 1:
        raise HW3Error(f"{len(train.pairs)} training pairs are fewer than one batch of {cfg.batch_size * world}")
    steps_per_epoch = max(1, micro_per_epoch // cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    val_every = cfg.val_every or steps_per_epoch

    state = {"step": 0, "epoch": 0, "micro": 0, "best": None, "best_step": None}
    resume_file = run_dir / "resume.pt"
    if resume and resume_file.is_file():
        try:  # weights_only: a resume file that would run code is refused, never executed
            ck = torch.load(resume_file, map_location="cpu", weights_only=True)
        except Exception as e:
            msg = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
            raise HW3Error(f"{resume_file}: not a readable resume state ({msg}); remove it to start over") from None
        if ck.get("config") != json.dumps({"captioner": asdict(model.config), "train": asdict(cfg)}, sort_keys=True):
            raise HW3Error(f"{resume_file}: run folder holds a run with another configuration (use a new --out)")
        model.load_trainable(ck["trainable"], str(resume_file))
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        state.update(ck["state"])
        if rank == 0:
            print(f"resuming at step {state['step']} (epoch {state['epoch']}, batch {state['micro']})", flush=True)
    log_path = run_dir / "log.jsonl"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)  # left by a write that was killed before its rename
        atomic_write_json(run_dir / "config.json", {"captioner": asdict(model.config), "train": asdict(cfg),
                                                    "parameters": report, "world_size": world})
        _truncate_log(log_path, state["step"])

    def log(entry):
        if rank == 0:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def save(kind: str):
        if rank != 0:
            return
        meta = {"step": state["step"], "epoch": state["epoch"], "best": state["best"]}
        save_checkpoint(run_dir / f"checkpoint-{kind}.safetensors", model, meta)
        if kind == "last":
            ck = {"trainable": model.trainable_state_dict(), "optimizer": opt.state_dict(),
                  "torch_rng": torch.get_rng_state(), "state": dict(state),
                  "config": json.dumps({"captioner": asdict(model.config), "train": asdict(cfg)}, sort_keys=True)}
            with atomic_path(resume_file) as tmp:
                torch.save(ck, tmp)

    def validate():
        result = {"step": state["step"], "epoch": state["epoch"]}
        if val is not None and val_source is not None:
            result["val_loss"] = validation_loss(model, val_source, val, cfg, autocast)
        fault_point("validation")
        if validator is not None:
            model.eval()
            result.update(validator(model))
            model.train()
        metric = result.get(cfg.select_metric if validator is not None else "val_loss")
        if metric is None:
            metric = result.get("val_loss")
        better = metric is not None and (state["best"] is None or (
            metric > state["best"] if cfg.select_metric == "cider" and validator is not None else metric < state["best"]))
        if better:
            state["best"], state["best_step"] = metric, state["step"]
        log({"validation": result, "best": state["best"]})
        if rank == 0:
            print("validation " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in result.items()), flush=True)
        return better

    model.train()
    if model.encoder is not None:
        model.encoder.eval()
    bar = tqdm(total=total, initial=state["step"], desc="training", disable=rank != 0 or progress_disabled(), dynamic_ncols=True)
    t0 = time.time()
    done = state["step"] >= total
    while not done and state["epoch"] < cfg.epochs:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + state["epoch"])
        order = torch.randperm(len(train.pairs), generator=g)[: micro_per_epoch * cfg.batch_size * world]
        order = order.view(micro_per_epoch, world, cfg.batch_size)[:, rank]  # (micro, batch) for this rank
        while state["micro"] < steps_per_epoch * cfg.grad_accum:
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                pairs = [train.pairs[i] for i in order[state["micro"]].tolist()]
                feats = train_source([p[0] for p in pairs])
                loss = batch_loss(net, feats, pairs, train.eot, cfg.max_caption_tokens, autocast) / cfg.grad_accum
                if not torch.isfinite(loss):
                    bar.close()
                    kept = run_dir / "checkpoint-last.safetensors"
                    raise HW3Error(f"non-finite loss ({loss.item()}) at step {state['step']}: training stopped; "
                                   f"last good checkpoint kept at {kept if kept.exists() else 'none (no save yet)'}")
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.item()
                state["micro"] += 1
            lr = lr_at(state["step"], total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            if scaler:
                scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip) if cfg.grad_clip > 0 else None
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            state["step"] += 1
            fault_point("step")
            bar.update()
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
            if state["step"] % cfg.log_every == 0 or state["step"] == 1:
                log({"step": state["step"], "epoch": state["epoch"], "loss": loss_sum, "lr": lr,
                     "grad_norm": None if gnorm is None else float(gnorm), "time": round(time.time() - t0, 2)})
            epoch_done = state["micro"] >= steps_per_epoch * cfg.grad_accum
            if epoch_done:  # saved state points at the start of the next epoch
                state["epoch"], state["micro"] = state["epoch"] + 1, 0
            at_end = state["step"] >= total
            if state["step"] % val_every == 0 or at_end:
                if validate():
                    save("best")
                save("last")
                if world > 1:
                    dist.barrier()
            if at_end:
                done = True
            if at_end or epoch_done:
                break
    bar.close()
    summary = {"steps": state["step"], "best": state["best"], "best_step": state["best_step"],
               "parameters": report, "seconds": round(time.time() - t0, 1)}
    if rank == 0:
        atomic_write_json(run_dir / "summary.json", summary)
        print(f"done: {state['step']} steps; best {cfg.select_metric if validator else 'val_loss'} "
              f"{state['best']} at step {state['best_step']}; {format_report(report)}", flush=True)
    return summary


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        s = entry.get("step", entry.get("validation", {}).get("step", 0))
        if s <= step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
