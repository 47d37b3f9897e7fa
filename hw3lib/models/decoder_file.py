"""The course's decoder weights file (`decoder_model.bin`): reading it into `gpt2.GPT2` (tensors
checked before anything is built, the model's shape inferred from them), writing it, and exporting one
from a transformers `GPT2LMHeadModel` folder.

The file stores GPT-2's Conv1D layout (in, out); `GPT2`'s linear layers are (out, in), so loading and
saving transpose (`CONV1D_SUFFIXES`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core.errors import HW3Error
from ..core.files import atomic_path
from ..core.weights import assign_weights, check_tensors, empty_model, read_state_dict
from .gpt2 import (
    CONV1D_SUFFIXES,
    GPT2,
    IGNORED_BUFFERS,
    GPT2Config,
    fresh_cross_attention,
    is_cross_attention_key,
)

# ----------------------------------------------------------------------------------------------
# the course's file format


def normalise_gpt2_state_dict(sd: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """Course/transformers GPT-2 keys -> this module's keys and layouts (Conv1D weights transposed).
    Consumes `sd`: each tensor leaves it as its converted copy is made, so the peak stays near one copy."""
    out, head = {}, None
    for key in list(sd):
        value = sd.pop(key)
        k = key[len("transformer."):] if key.startswith("transformer.") else key
        if k.endswith(IGNORED_BUFFERS):
            continue
        if k == "lm_head.weight":
            head = value
            continue
        out[k] = value.t().contiguous() if k.endswith(CONV1D_SUFFIXES) and value.dim() == 2 else value
    if head is not None and "wte.weight" in out and not head.is_meta and not torch.equal(head, out["wte.weight"]):
        raise HW3Error(f"{source}: lm_head.weight differs from wte.weight; the decoder's head must be tied")
    return out


# what a course-format decoder file may describe: far above GPT-2 XL (50257 x 1600, 48 layers, 1024
# positions), far below what would exhaust memory when a small file claims it
LIMITS = {"vocab_size": 1_000_000, "n_embd": 16_384, "block_size": 65_536, "n_layer": 256}


def infer_config(sd: dict[str, torch.Tensor], source) -> GPT2Config:
    """Read vocab, width, depth and block size off the tensors, after checking them (`check_tensors`);
    the head count is not stored, so it follows GPT-2's 64-dimensional heads unless the file is smaller."""
    for key in ("wte.weight", "wpe.weight"):
        if key not in sd:
            raise HW3Error(f"{source}: missing key {key!r}; not a GPT-2 decoder weights file")
        if sd[key].dim() != 2:
            raise HW3Error(f"{source}: {key} has shape {tuple(sd[key].shape)}, not (rows, width)")
    check_tensors(sd, source, "decoder weights")
    vocab, n_embd = sd["wte.weight"].shape
    block, width = sd["wpe.weight"].shape
    n_layer = _layer_count(sd, source)
    found = {"vocab_size": vocab, "n_embd": n_embd, "block_size": block, "n_layer": n_layer}
    for name, value in found.items():
        if not 1 <= value <= LIMITS[name]:
            raise HW3Error(f"{source}: {name} = {value} read off the tensors is outside 1..{LIMITS[name]:,}")
    if width != n_embd:
        raise HW3Error(f"{source}: wpe.weight is {width} wide, wte.weight {n_embd}")
    n_head = n_embd // 64 if n_embd % 64 == 0 and n_embd >= 128 else max(1, n_embd // 32)
    cross = any(is_cross_attention_key(k) for k in sd)
    return GPT2Config(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      cross_attention=cross)


def _layer_count(sd: dict[str, torch.Tensor], source) -> int:
    """Blocks are h.0 .. h.(n-1), every one of them present: a stray `h.999999999.*` key is refused
    before anything is built for it."""
    layers = set()
    for k in sd:
        if k.startswith("h."):
            index = k.split(".")[1]
            if not (index.isascii() and index.isdecimal()):
                raise HW3Error(f"{source}: key {k!r} does not name a block by number")
            layers.add(int(index))
    if not layers:
        raise HW3Error(f"{source}: no transformer blocks (h.0.*) found")
    if max(layers) >= LIMITS["n_layer"]:
        raise HW3Error(f"{source}: key h.{max(layers)}.* names block {max(layers)}; at most {LIMITS['n_layer']} blocks")
    gaps = sorted(set(range(max(layers) + 1)) - layers)
    if gaps:
        raise HW3Error(f"{source}: blocks {', '.join(map(str, gaps[:5]))} are missing between h.0 and h.{max(layers)}")
    return max(layers) + 1


def decoder_config(path: str | os.PathLike, n_head: int | None = None, cross_attention: bool = False,
                   coverage: bool = False) -> GPT2Config:
    """The configuration `load_decoder` would build, read off the file's tensor shapes alone."""
    path = Path(path)
    cfg = infer_config(normalise_gpt2_state_dict(read_state_dict(path, "decoder weights file", meta=True), path), path)
    cfg.n_head = n_head or cfg.n_head
    cfg.cross_attention = cross_attention or cfg.cross_attention
    cfg.coverage = coverage and cfg.cross_attention
    return cfg


def load_decoder(path: str | os.PathLike, n_head: int | None = None, cross_attention: bool = False,
                 coverage: bool = False) -> GPT2:
    """Load a decoder weights file in the course format (GPT-2 small or any smaller shape).

    `n_head` overrides the inferred head count (the file does not store it). With `cross_attention`,
    fresh cross-attention sub-layers are added (the captioner initialises them); cross-attention
    tensors present in the file are loaded. With `coverage` the cross-attention also gets its coverage
    weights (zero: no course file holds them).
    """
    path = Path(path)
    sd = normalise_gpt2_state_dict(read_state_dict(path, "decoder weights file"), path)
    cfg = infer_config(sd, path)
    if n_head is not None:
        cfg.n_head = n_head
    if cfg.n_embd % cfg.n_head:
        raise HW3Error(f"{path}: width {cfg.n_embd} is not divisible by {cfg.n_head} heads")
    file_has_cross = cfg.cross_attention
    cfg.cross_attention = cross_attention or file_has_cross
    cfg.coverage = coverage and cfg.cross_attention
    with empty_model():  # parameters on the meta device: the file's tensors become them
        model = GPT2(cfg)
    if cfg.cross_attention and not file_has_cross:
        sd |= fresh_cross_attention(model)
    elif cfg.coverage:
        sd |= {f"h.{i}.crossattention.coverage": torch.zeros(cfg.n_head) for i in range(cfg.n_layer)}
    return assign_weights(model, sd, path)


def decoder_state_dict(model: GPT2, include_cross: bool = False) -> dict[str, torch.Tensor]:
    """The course file's tensors: Conv1D layout, no prefix, no head (tied)."""
    out = {}
    for k, v in model.state_dict().items():
        if not include_cross and is_cross_attention_key(k):
            continue
        out[k] = v.t().contiguous() if k.endswith(CONV1D_SUFFIXES) else v.clone()
    return out


def save_decoder(model: GPT2, path: str | os.PathLike) -> None:
    """Write `model` as a course-format decoder file (torch.save of plain tensors; atomic). Saved through a
    file object, the archive's inner folder is torch's fixed "archive", not the temporary file's random name:
    the same weights give the same bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(decoder_state_dict(model), f)


def export_decoder_from_transformers(gpt2_dir: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the course format from a transformers GPT-2 folder (config.json + weights)."""
    gpt2_dir = Path(gpt2_dir)
    candidates = [gpt2_dir / "model.safetensors", gpt2_dir / "pytorch_model.bin"]
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise HW3Error(f"{gpt2_dir}: no model.safetensors or pytorch_model.bin in this folder")
    sd = normalise_gpt2_state_dict(read_state_dict(weights, "GPT-2 weights file"), weights)
    cfg = infer_config(sd, weights)
    cfg_file = gpt2_dir / "config.json"
    if cfg_file.is_file():
        from ..core.files import read_json

        hf = read_json(cfg_file)
        cfg.n_head = int(hf.get("n_head", cfg.n_head))
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise HW3Error(f"{cfg_file}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    cfg.cross_attention = False
    sd = {k: v for k, v in sd.items() if not is_cross_attention_key(k)}
    with empty_model():
        model = GPT2(cfg)
    assign_weights(model, sd, weights)
    save_decoder(model, out)
    return len(decoder_state_dict(model))
