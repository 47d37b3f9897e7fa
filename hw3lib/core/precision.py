"""Numeric precision by what the device can do, for training and decoding alike.

`amp = "auto"` is
- bf16 on a CUDA GPU with bf16 tensor cores (compute capability 8.0 and newer: A100, RTX 30xx/40xx, H100);
- fp16 with a loss scaler on older CUDA GPUs (the course's RTX 2080 Ti is Turing, 7.5: no bf16);
- fp32 on the CPU (bf16 there is emulated on many CPUs; a measurement would have to say otherwise).

Under half precision the frozen weights (encoder, frozen decoder) are stored in that dtype, so a
frozen ViT-g takes 3.7 GB of the GPU instead of 7.4; trainable tensors, their gradients and the
optimiser state stay fp32 (mixed precision). Every forward pass runs under `autocast()`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import HW3Error

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
BF16_CAPABILITY = (8, 0)  # first CUDA compute capability with bf16 tensor cores (Ampere)
_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    amp: str  # what the run computes in: off (fp32) | bf16 | fp16
    device_type: str  # cpu | cuda | mps
    reason: str  # why, in words (logs, --print-config, --plan)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32, no autocast)."""
        return _DTYPES[self.amp]

    @property
    def storage(self) -> torch.dtype:
        """The dtype frozen weights are stored in."""
        return self.dtype or torch.float32

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.amp == "fp16"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"{'fp32' if self.amp == 'off' else self.amp}: {self.reason}"


def cuda_capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def choose_precision(amp: str, device: str | torch.device) -> Precision:
    """The precision of a run with setting `amp` on `device` (see the module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_precision(amp, device.type)
    cap = cuda_capability(device)
    return gpu_precision(amp, cap, f"{device_name(device)}, compute capability {cap[0]}.{cap[1]}")


def cpu_precision(amp: str, device_type: str = "cpu") -> Precision:
    _check(amp)
    if amp == "auto":
        return Precision("off", device_type, f"{device_type}, where fp32 is the measured default")
    return Precision(amp, device_type, f"amp={amp} asked for, on the {device_type}")


def gpu_precision(amp: str, capability: tuple[int, int], where: str) -> Precision:
    """The precision on a CUDA GPU of this compute capability (`where` names it in messages)."""
    _check(amp)
    has_bf16 = tuple(capability) >= BF16_CAPABILITY
    if amp == "bf16" and not has_bf16:
        raise HW3Error(f"amp=bf16: {where} has no bf16 tensor cores (needs 8.0); use amp=fp16 or amp=auto")
    if amp != "auto":
        return Precision(amp, "cuda", f"amp={amp} asked for, on {where}")
    if has_bf16:
        return Precision("bf16", "cuda", f"{where} has bf16 tensor cores")
    return Precision("fp16", "cuda", f"{where} has no bf16; fp16 with loss scaling")


def _check(amp: str) -> None:
    if amp not in AMP_CHOICES:
        raise HW3Error(f"amp={amp!r}: choose from {', '.join(AMP_CHOICES)}")


def store_frozen(model: nn.Module, precision: Precision) -> nn.Module:
    """Store every frozen parameter and floating buffer in the run's half precision (trainable
    parameters stay fp32). A no-op in fp32."""
    dtype = precision.storage
    if dtype == torch.float32:
        return model
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)
    for b in model.buffers():
        if b.is_floating_point():
            b.data = b.data.to(dtype)
    return model
