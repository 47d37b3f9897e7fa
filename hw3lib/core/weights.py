"""Weights files into models with one copy in memory, and one-line errors when they do not fit.

A model is built with its parameters on the meta device (`empty_model`: no memory, no random init;
buffers are built as usual), and the file's tensors then become its parameters
(`load_state_dict(assign=True)`). A safetensors file is memory-mapped, so its tensors are the file's
pages; a torch zip file is read once. Either way the peak is about one copy of the weights, where
building a randomly initialised model and copying the file into it needs two.

Files are read without unpickling code (`weights_only`), and every tensor must be a tensor.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .errors import HW3Error, first_line

SHOWN = 5  # keys named per kind in a does-not-fit message


@contextlib.contextmanager
def empty_model():
    """Modules built inside get their parameters on the meta device; buffers (causal masks and the
    like, which files do not hold) are built on the CPU as usual, and torch's generator is left as it
    was, so loading a model does not move the seeded initialisation of what is built after it. Assign
    weights after the block: inside it, every parameter set on a module goes to the meta device."""
    from accelerate import init_empty_weights

    # constructors that draw small tensors inline (a position embedding) leave the generator as it was
    with init_empty_weights(include_buffers=False), torch.random.fork_rng(devices=[]):
        yield


def read_state_dict(path: str | os.PathLike, what: str = "weights file", meta: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or torch file (a `{"state_dict": ...}` wrapper is unwrapped).
    With `meta`, only their names, shapes and dtypes (meta tensors; the data is not read)."""
    path = Path(path)
    if not path.is_file():
        raise HW3Error(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise HW3Error(f"{path}: empty file (0 bytes)")
    try:
        if path.suffix == ".safetensors" and meta:
            sd = _safetensors_shapes(path)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))  # memory-mapped: the tensors are the file's pages
        else:
            # weights_only: a file that would run code on unpickling is refused, not run; torch's advice on
            # pickle protocols is for its own developers, not for the user of a damaged file
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                sd = torch.load(path, map_location="meta" if meta else "cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise a zoo of types for bad files
        raise HW3Error(f"{path}: not a readable weights file ({why_unreadable(path, e)})") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        raise HW3Error(f"{path}: expected a state dict of named tensors")
    return sd


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
                     ) -> None:
    """Write `tensors` (and string `metadata`) as a safetensors file, atomically, and the same bytes for the
    same input: safetensors writes its metadata map in hash order, different in every process, so the header
    is written again with the metadata's keys sorted (the tensors' entries keep the library's own order)."""
    import json

    from safetensors.torch import save

    from .files import atomic_path

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items()))} | header
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(data)[8 + n:])


def why_unreadable(path: str | os.PathLike, e: BaseException) -> str:
    """A short reason of our own for a weights file that torch or safetensors could not read, told by the
    file's first bytes (their own messages run to paragraphs of advice that does not apply here)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if Path(path).suffix == ".safetensors":
        return f"a damaged safetensors file: {first_line(e, 120)}"
    if head.startswith(b"PK\x03\x04"):
        return "a damaged torch file: its zip archive is cut short or changed after saving"
    if head[:1] == b"\x80" and "weights only" in str(e).lower():
        return "a pickle that is not plain tensors; refused, since loading never unpickles code"
    return "neither a safetensors nor a torch file"


def _safetensors_shapes(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        out = {}
        for k in f.keys():  # noqa: SIM118 - safe_open has no items()
            sl = f.get_slice(k)
            out[k] = torch.empty(sl.get_shape(), dtype=getattr(torch, _SAFETENSORS_DTYPES[sl.get_dtype()]),
                                 device="meta")
        return out


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def mismatch(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], shown: int = SHOWN) -> str | None:
    """What keeps `sd` from fitting `own`: up to `shown` missing and unexpected keys (with their
    counts) and the first shape mismatch; None when it fits."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} is {tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    parts = [f"{label} {len(items)}: {', '.join(items[:shown])}{' ...' if len(items) > shown else ''}"
             for label, items in (("missing", missing), ("unexpected", unexpected)) if items]
    if shapes:
        parts.append(f"shape mismatch {len(shapes)}: {shapes[0]}{' ...' if len(shapes) > 1 else ''}")
    return "; ".join(parts) or None


def check_fit(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], source,
              problem: str = "weights do not fit the model", hint: str = "") -> None:
    """One line naming what keeps `sd` from fitting `own` (see `mismatch`)."""
    found = mismatch(own, sd)
    if found:
        raise HW3Error(f"{source}: {problem} ({found}){hint}")


def assign_weights(model: nn.Module, sd: dict[str, torch.Tensor], source, problem: str = "weights do not fit the model",
                   hint: str = "") -> nn.Module:
    """Make the tensors of `sd` the model's parameters and buffers (no copy; `requires_grad` kept).
    The key sets must agree exactly; then nothing of the model is left on the meta device."""
    check_fit(model.state_dict(), sd, source, problem, hint)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise HW3Error(f"{source}: the file leaves {len(left)} tensor(s) of the model unset: {', '.join(left[:SHOWN])}")
    return model


def check_tensors(sd: dict[str, torch.Tensor], source, what: str = "weights") -> None:
    """Every tensor of a weights file is floating point, holds as many elements as its storage has (no
    stride tricks that make a small file describe a huge tensor), and, when its data is there, is finite.
    One check for every weights file the project reads (the decoder file, captioner checkpoints)."""
    for k, t in sd.items():
        if not t.is_floating_point():
            raise HW3Error(f"{source}: {k} holds {t.dtype} values; {what} are floating point")
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise HW3Error(f"{source}: {k} claims shape {tuple(t.shape)}, more than the {t.untyped_storage().nbytes():,} "
                           "bytes the file stores for it")
        if not t.is_meta and not bool(torch.isfinite(t).all()):
            raise HW3Error(f"{source}: {k} holds non-finite values (NaN or inf)")
