"""AdamW, on torch's fused kernel where it has one for the parameters' device and dtype.

torch's default AdamW walks the tensors one by one, a handful of small kernels per tensor; the fused
kernel updates each tensor in one pass. For the small models of this project, whose steps are short, that
is a visible share of a step (`bench/bench_train_step.py`); for the demo CLIP, whose token embedding holds
the whole 49,408-token vocabulary, it is the largest update of every step. The update is AdamW's either
way (Loshchilov & Hutter); the last bits of a weight may differ between the two kernels.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW runs (floating-point parameters)


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Can torch's fused AdamW update all of `params` (one device type it supports, floating point)?"""
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= set(FUSED_DEVICES) and all(p.is_floating_point() for p in params)


def adamw(params: Iterable[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch.optim.AdamW over `params`, fused where `fused_supported`, torch's default loop elsewhere."""
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused_supported(params) or None)
