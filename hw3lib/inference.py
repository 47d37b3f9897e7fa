"""Getting a captioner ready for fast decoding: `with fast_decoding(model, device): ...`.

What it does depends on the device, and only `quantize="int8"` changes what the model computes:

- CPU, fp32 (the default there), when twice the copy's size is available: every plain `nn.Linear` of
  the decoder (PEFT base layers included)
  and the tied LM head run through MKL's packed-weight GEMM (`torch.ops.mkl._mkl_linear`, the kernel
  inductor uses for frozen fp32 linears). The weights are reordered once into the kernel's panel
  layout, so a decoding step, a GEMM of only 16-64 rows that is bound by streaming the weights, stops
  repacking them on every call. The results are bit-identical to `F.linear` (tested); the price is a
  second copy of the decoder's weights while the context is active (about 0.8 GB for GPT-2 small).
- CPU, `quantize="int8"` (opt-in, never the default): a copy of the decoder with the PEFT deltas
  merged into the base weights, whose linear layers and LM head are dynamic int8 (int8 weights,
  activations quantised per call). Faster, and the captions can change; the README reports by how much.
- CUDA: autocast in the GPU's half precision (`precision.choose_precision`: bf16 from compute
  capability 8.0, fp16 below) for the encoder and the decoder (whose attention is SDPA unless maps
  are captured). Logits are cast back to fp32 before any argmax or log-softmax.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn

from .files import HW3Error
from .precision import choose_precision

QUANTIZE_CHOICES = ("none", "int8")


def packed_linears_available() -> bool:
    """MKL's packed fp32 GEMM is present in this torch build (and not switched off by HW3_PACKED=0)."""
    return (os.environ.get("HW3_PACKED", "1") != "0" and torch.backends.mkl.is_available()
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


def _packed_forward(weight, packed, bias, rows_hint):
    def forward(x):
        return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows_hint)

    return forward


@contextmanager
def packed_linears(decoder: nn.Module, rows_hint: int = 16):
    """Run the decoder's fp32 linear layers and LM head on MKL-packed weights inside the block."""
    patched = []
    grad = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # the packed kernel has no backward
    try:
        for m in decoder.modules():
            if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu":
                w = m.weight.detach()
                b = None if m.bias is None else m.bias.detach()
                m.forward = _packed_forward(w, torch.ops.mkl._mkl_reorder_linear_weight(w, rows_hint), b, rows_hint)
                patched.append(m)
        wte = decoder.wte.weight.detach()
        head = _packed_forward(wte, torch.ops.mkl._mkl_reorder_linear_weight(wte, rows_hint), None, rows_hint)
        decoder.logits = head  # instance attribute: shadows GPT2.logits until removed
        patched.append(decoder)
        yield decoder
    finally:
        torch.set_grad_enabled(grad)
        for m in patched:
            m.__dict__.pop("logits" if m is decoder else "forward", None)


def merged_copy(decoder: nn.Module) -> nn.Module:
    """A copy of the decoder with every PEFT layer (peft's LoRA/DoRA/(IA)^3) merged into its base layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    dec = copy.deepcopy(decoder)
    for name, module in list(dec.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(dec.get_submodule(parent) if parent else dec, child, module.get_base_layer())
    return dec


def int8_decoder(decoder: nn.Module) -> nn.Module:
    """Dynamic int8 copy of the decoder (merged PEFT, int8 linears and LM head) for CPU decoding."""
    from torch.ao.quantization import quantize_dynamic

    head = nn.Linear(decoder.config.n_embd, decoder.config.vocab_size, bias=False)
    head.weight = nn.Parameter(decoder.wte.weight.detach().float().clone(), requires_grad=False)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # torch.ao's deprecation notes
        warnings.simplefilter("ignore")
        dec = quantize_dynamic(merged_copy(decoder).float(), {nn.Linear}, dtype=torch.qint8)
        qhead = quantize_dynamic(nn.Sequential(head), {nn.Linear}, dtype=torch.qint8)[0]
    dec.logits = lambda hidden: qhead(hidden)  # a plain function: an instance attribute shadowing GPT2.logits
    return dec


@contextmanager
def fast_decoding(model, device="cpu", quantize: str | None = None, rows_hint: int = 16, precision=None):
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
        elif quantize == "int8":
            original = model.decoder
            model.decoder = int8_decoder(original)
            stack.callback(setattr, model, "decoder", original)
        elif (packed_linears_available() and model.decoder.wte.weight.dtype == torch.float32
              and packed_copy_fits(model.decoder)):
            stack.enter_context(packed_linears(model.decoder, rows_hint))
        yield model

