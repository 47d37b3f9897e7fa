"""Getting a captioner ready for fast decoding: `with fast_decoding(model, device): ...`.

What it does depends on the device, and only `quantize="int8"` changes what the model computes:

- CPU, fp32 (the default there), when twice the copy's size is available: every plain `nn.Linear` of
  the decoder (PEFT base layers and the tied LM head `lm_head` included) is swapped for a
  `PackedLinear(base_layer)` module that runs MKL's packed-weight GEMM (`torch.ops.mkl._mkl_linear`,
  the kernel inductor uses for frozen fp32 linears); on exit the original modules are swapped back.
  The weights are reordered once into the kernel's panel layout, so a decoding step, a GEMM of only
  16-64 rows that is bound by streaming the weights, stops repacking them on every call. The results
  are bit-identical to `F.linear` (tested); the price is a
  second copy of the decoder's weights while the context is active (about 0.8 GB for GPT-2 small).
- CPU, `quantize="int8"` (opt-in, never the default): a copy of the decoder with the PEFT deltas
  merged into the base weights, whose linear layers and LM head are dynamic int8 modules (int8
  weights, activations quantised per call), swapped in for `model.decoder` and back. Faster, and the
  captions can change; the README reports by how much.
- CUDA: autocast in the GPU's half precision (`precision.choose_precision`: bf16 from compute
  capability 8.0, fp16 below) for the encoder and the decoder (whose attention is SDPA unless maps
  are captured). Logits are cast back to fp32 before any argmax or log-softmax.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn

from ..core.errors import HW3Error
from ..core.precision import choose_precision

QUANTIZE_CHOICES = ("none", "int8")


def packed_linears_available() -> bool:
    """MKL's packed fp32 GEMM is present in this torch build."""
    return (torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_linear") and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


def packed_copy_fits(decoder: nn.Module) -> bool:
    """The packed weights are a second copy of the decoder's linear layers and head: made only when
    the machine has twice that much memory available (so a 12 GB machine holding a ViT-g decodes
    unpacked, with the same tokens, rather than running out of memory)."""
    need = sum(m.weight.numel() for m in decoder.modules() if type(m) is nn.Linear) + decoder.wte.weight.numel()
    available = _available_memory()
    return available is None or available >= 2 * 4 * need


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            line = next(x for x in f if x.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


class PackedLinear(nn.Module):
    """A frozen fp32 `base_layer` (nn.Linear) run through MKL's packed-weight GEMM: the weight reordered
    once into the kernel's panel layout. Bit-identical to the base layer's forward (tested); no backward.
    `weight` and `bias` are the base layer's, so code that reads them (peft's DoRA) sees the same tensors."""

    def __init__(self, base_layer: nn.Linear, rows_hint: int = 16):
        super().__init__()
        self.base_layer = base_layer
        self.rows_hint = rows_hint  # the GEMM's expected row count (decoding batch x beams)
        w = base_layer.weight.detach()
        self.register_buffer("packed", torch.ops.mkl._mkl_reorder_linear_weight(w, rows_hint), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x):
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight.detach(), bias, self.rows_hint)


def swap_modules(root: nn.Module, make) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every sub-module m of `root` for which `make(m)` returns a module by that module;
    returns (parent, name, original) of each swap, for `restore_modules`."""
    swapped = []
    for name, module in list(root.named_modules(remove_duplicate=False)):
        new = make(module) if name else None
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name)
            swapped.append((parent, child, module))
            setattr(parent, child, new)
    return swapped


def restore_modules(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, child, original in reversed(swapped):
        setattr(parent, child, original)


@contextmanager
def packed_linears(decoder: nn.Module, rows_hint: int = 16):
    """Inside the block, the decoder's fp32 CPU linear layers (the tied LM head included) are
    `PackedLinear` modules; on exit the original modules are swapped back."""
    def pack(m):
        if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu":
            return PackedLinear(m, rows_hint)
        return None

    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # the packed kernel has no backward
    swapped = []
    try:
        swapped = swap_modules(decoder, pack)
        yield decoder
    finally:
        restore_modules(swapped)
        torch.set_grad_enabled(grad)


def merged_copy(decoder: nn.Module) -> nn.Module:
    """A copy of the decoder with every PEFT layer (peft's LoRA/DoRA/(IA)^3) merged into its base layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def merge(m):
        if isinstance(m, BaseTunerLayer):
            m.merge()
            return m.get_base_layer()
        return None

    dec = copy.deepcopy(decoder)
    swap_modules(dec, merge)
    return dec


def int8_decoder(decoder: nn.Module) -> nn.Module:
    """Dynamic int8 copy of the decoder (merged PEFT; every linear layer, the LM head included, int8)
    for CPU decoding. The head's int8 weights are its own copy; `wte` stays fp32 for the embedding."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # torch.ao's deprecation notes
        warnings.simplefilter("ignore")
        return quantize_dynamic(merged_copy(decoder).float(), {nn.Linear}, dtype=torch.qint8)


@contextmanager
def fast_decoding(model, device="cpu", quantize: str | None = None, rows_hint: int = 16, precision=None,
                  packed: bool = True):
    """Inside the block, `model` (a Captioner) decodes with the fastest exact path for `device`, or the
    int8 path when asked. The model is restored on exit, even after an error. On CUDA, `precision`
    (default: amp=auto for the device) decides the autocast dtype."""
    device = torch.device(device)
    quantize = quantize or "none"
    if quantize not in QUANTIZE_CHOICES:
        raise HW3Error(f"--quantize: unknown choice {quantize!r} (choose from {', '.join(QUANTIZE_CHOICES)})")
    if quantize == "int8" and device.type != "cpu":
        raise HW3Error(f"--quantize int8 runs on the CPU only (device is {device})")
    with ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context((precision or choose_precision("auto", device)).autocast())
        elif quantize == "int8":  # a module swap, swapped back on exit
            original = model.decoder
            model.decoder = int8_decoder(original)
            stack.callback(setattr, model, "decoder", original)
        elif (packed and packed_linears_available() and model.decoder.wte.weight.dtype == torch.float32
              and packed_copy_fits(model.decoder)):
            stack.enter_context(packed_linears(model.decoder, rows_hint))
        yield model

