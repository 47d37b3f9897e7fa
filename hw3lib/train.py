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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .captioner import (
    Captioner,
    check_budget,
    format_report,
    parameter_report,
    save_checkpoint,
)
from .config import TrainConfig
from .data import CaptionSet
from .features import FeatureSource
from .io import (
    HW3Error,
    atomic_path,
    atomic_write_json,
    fault_point,
    progress_disabled,
    remove_stale_temporaries,
)
from .tokenizer import teacher_forcing_batch

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
