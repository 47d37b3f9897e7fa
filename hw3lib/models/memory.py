"""The memory a training run needs, estimated before any weight is loaded (`hw3 train --plan`, and a
line at the start of every training).

The captioner is built on the meta device from the manifest (any timm encoder, the decoder's shapes
read off its file), so nothing is allocated. Then:

- weights: frozen parameters in the run's storage dtype (half on a GPU under mixed precision),
  trainable parameters in fp32;
- gradients (fp32, one per trainable parameter) and AdamW's two fp32 moments;
- activations: one micro-batch's training forward and loss run on meta tensors, counting every
  tensor autograd saves for the backward pass (`saved_tensors_hooks`), each storage once;
- transient: what lives only for a moment at the peak: the loss's fp32 logits and their gradient,
  and, with the live encoder, its widest forward step (no gradient).

On a GPU the estimate is compared with the card's memory less what the CUDA context and libraries
take (`CUDA_RESERVE`); when it does not fit, the run is refused with a setting that would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.errors import HW3Error
from ..core.precision import Precision
from .captioner import meta_captioner

GiB = 2**30
CUDA_RESERVE = 0.6 * GiB  # CUDA context, cuBLAS/cuDNN workspaces: outside torch's allocator
CUDA_USABLE = 0.95  # of what is left: the caching allocator's fragmentation


@dataclass(frozen=True)
class MemoryPlan:
    frozen_weights: int  # bytes of frozen parameters, in their storage dtype
    trainable_weights: int  # bytes of trainable parameters (fp32)
    gradients: int  # bytes of their gradients (fp32)
    optimizer: int  # bytes of AdamW's two moments (fp32)
    activations: int  # bytes autograd saves for one micro-batch's backward pass
    transient: int  # bytes alive only at the peak: fp32 logits + gradient, the live encoder's widest step
    batch_size: int  # micro-batch the plan is for
    tokens: int  # caption tokens per pair (the longest a batch can hold)
    live_encoder: bool  # the encoder runs in every step (no feature cache)

    @property
    def total(self) -> int:
        return (self.frozen_weights + self.trainable_weights + self.gradients + self.optimizer + self.activations
                + self.transient)

    def describe(self) -> str:
        parts = [("frozen weights", self.frozen_weights), ("trainable", self.trainable_weights),
                 ("gradients", self.gradients), ("AdamW", self.optimizer), ("activations", self.activations),
                 ("transient", self.transient)]
        return (f"memory plan: {size(self.total)} for batch {self.batch_size} x {self.tokens} tokens"
                f"{', live encoder' if self.live_encoder else ', cached encoder tokens'} ("
                + ", ".join(f"{k} {size(v)}" for k, v in parts) + ")")


def size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 4 else f"{n / 2**20:.1f} MiB"


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(model, feats: torch.Tensor, ids: torch.Tensor) -> tuple[int, int]:
    """(bytes autograd saves, bytes of the fp32 logits) for one training forward + loss of `model`
    (a Captioner) on meta tensors: feats (B, S, E), ids (B, T)."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s._cdata not in params:
            saved[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(feats, ids).float()  # (B, T, V): batch_loss's packed (N, V) when every caption is T long
        F.cross_entropy(logits.flatten(0, 1), ids.flatten())
    return sum(saved.values()), logits.numel() * 4


def encoder_step_bytes(encoder, images: torch.Tensor) -> int:
    """The widest moment of the encoder's no-gradient forward: the largest module input + output."""
    widest = 0

    def hook(module, inputs, output):
        nonlocal widest
        outs = output if isinstance(output, (tuple, list)) else (output,)
        tensors = [t for t in (*inputs, *outs) if isinstance(t, torch.Tensor)]
        widest = max(widest, _bytes(tensors))

    handles = [m.register_forward_hook(hook) for m in encoder.modules()]
    try:
        with torch.no_grad():
            out = encoder.forward_features(images)
    finally:
        for h in handles:
            h.remove()
    return widest + _bytes([images, out])


def estimate(model, batch_size: int, tokens: int, precision: Precision, live_encoder: bool,
             image_size: tuple[int, int] | None = None) -> MemoryPlan:
    """The plan for training `model` (a Captioner built on the meta device: `meta_captioner`)."""
    storage = precision.storage
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    # autocast: activations in half, as if the whole model were
    act_model = model if storage == torch.float32 else _half_copy(model, storage)
    enc = act_model.encoder
    if enc is not None and image_size is None:
        from .loading import encoder_data_config

        image_size = tuple(encoder_data_config(enc)["input_size"][1:])
    n_tokens = _encoder_tokens(enc, image_size) if enc is not None else None
    feats = torch.empty(batch_size, n_tokens or 1, act_model.encoder_dim, device="meta", dtype=storage)
    ids = torch.zeros(batch_size, tokens, dtype=torch.long, device="meta")
    saved, logits = saved_activation_bytes(act_model, feats, ids)
    transient = 2 * logits
    if live_encoder and enc is not None:
        images = torch.empty(batch_size, 3, *image_size, device="meta", dtype=storage)
        transient += encoder_step_bytes(enc, images)
    return MemoryPlan(frozen_weights=sum(p.numel() for p in frozen) * storage.itemsize, trainable_weights=trainable,
                      gradients=trainable, optimizer=2 * trainable, activations=saved, transient=transient,
                      batch_size=batch_size, tokens=tokens, live_encoder=live_encoder)


def _half_copy(model, dtype):
    import copy

    half = copy.deepcopy(model)  # meta tensors: costs nothing
    return half.to(dtype)


def _encoder_tokens(encoder, image_size) -> int:
    """Tokens the encoder gives per image (CLS + patches), from a meta forward."""
    x = torch.empty(1, 3, *image_size, device="meta", dtype=next(encoder.parameters()).dtype)
    with torch.no_grad():
        return encoder.forward_features(x).shape[1]


def usable_gpu_bytes(total: int) -> int:
    """What torch's allocator can use of a GPU with `total` bytes."""
    return int((total - CUDA_RESERVE) * CUDA_USABLE)


def plan_run(manifest, cap_cfg, train_cfg, precision: Precision):
    """(meta captioner, plan) for training `cap_cfg` with `train_cfg` under `precision`."""
    model = meta_captioner(manifest, cap_cfg)
    live = not train_cfg.feature_cache or train_cfg.augment
    return model, estimate(model, train_cfg.batch_size, train_cfg.max_caption_tokens, precision, live)


def suggest(model, plan: MemoryPlan, train_cfg, precision: Precision, budget: int) -> str:
    """A setting that fits `budget`: the feature cache (when the live encoder is what does not fit),
    or a smaller micro-batch with more accumulation, so the optimiser step sees the same batch."""
    if plan.live_encoder and not train_cfg.augment:
        cached = estimate(model, plan.batch_size, plan.tokens, precision, False)
        if cached.total <= budget:
            return f"--feature_cache=true ({size(cached.total)})"
    batch, accum = plan.batch_size, train_cfg.grad_accum
    while batch > 1:
        batch, accum = batch // 2, accum * 2
        smaller = estimate(model, batch, plan.tokens, precision, plan.live_encoder)
        if smaller.total <= budget:
            return f"--batch_size={batch} --grad_accum={accum} ({size(smaller.total)}, the same effective batch)"
    return f"no batch size or accumulation: the weights alone take {size(plan.total - plan.activations - plan.transient)}"


def check_fits(model, plan: MemoryPlan, train_cfg, precision: Precision, budget: int) -> None:
    """Refuse, with one line naming a setting that would fit, a run whose plan exceeds `budget` bytes."""
    if plan.total > budget:
        raise HW3Error(f"the run needs about {size(plan.total)} of GPU memory, {size(budget)} is usable; "
                       f"what would fit: {suggest(model, plan, train_cfg, precision, budget)}")
