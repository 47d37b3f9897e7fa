"""P2's captioner: frozen timm ViT -> trainable projection -> frozen GPT-2 with trainable cross-attention,
plus parameter-efficient fine-tuning (PEFT) of the decoder (the kinds: `tuning.py`).

Initialisation keeps the untrained captioner equal to the pretrained language model: the cross-attention
output projection starts at zero, LoRA's B and adapters' up-projections start at zero, (IA)^3 vectors at
one, and prompt/prefix attention is gated per head by tanh(gate) with gate = 0 (`prefix_gate`).

Freezing is decided by module types (`component_of`): a parameter trains when it belongs to the
projection, a cross-attention sub-layer (`decoder.CrossAttention`, `decoder.CrossAttentionNorm`) or a
PEFT module (outside that module's `base_layer`); everything else is frozen. The parameter report
comes from the same walk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ..core.errors import HW3Error, first_line, invalid
from ..core.patches import PatchGrid
from ..core.precision import Precision, store_frozen
from ..core.weights import check_fit, check_tensors
from . import peft as tuning
from .gpt2 import GPT2, CrossAttention, CrossAttentionNorm
from .packing import Packing
from .peft import PEFT_KINDS

CHECKPOINT_FORMAT = "hw3lib-captioner-1"
Module = Annotated[str, StringConstraints(min_length=1)]  # a decoder module name, e.g. "attn.c_attn"


def _for(*kinds: str) -> dict:
    """A [captioner] setting that only the PEFT kinds `kinds` read (`kinds_of`)."""
    return {"peft_kinds": list(kinds)}


@pydantic_dataclass(config=ConfigDict(strict=True, extra="forbid"))
class CaptionerConfig:
    """The [captioner] table: which PEFT kind wraps the decoder, and its sizes. Checked wherever the values
    come from (TOML, --key=value, checkpoint metadata); `hw3 train --help` lists the descriptions."""
    peft: str = Field("lora", description=" | ".join(PEFT_KINDS))
    lora_r: int = Field(16, ge=1, le=4096, description="LoRA / DoRA rank", json_schema_extra=_for("lora", "dora"))
    lora_alpha: float = Field(32.0, gt=0, allow_inf_nan=False, description="LoRA scale numerator (scale = alpha / r)",
                              json_schema_extra=_for("lora", "dora"))
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input",
                                json_schema_extra=_for("lora", "dora"))
    lora_targets: list[Module] = Field(default_factory=lambda: ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                                       min_length=1, description="LoRA/DoRA modules",
                                       json_schema_extra=_for("lora", "dora"))
    ia3_targets: list[Module] = Field(default_factory=lambda: ["attn.c_attn", "mlp.c_proj"], min_length=1,
                                      description="(IA)^3 modules", json_schema_extra=_for("ia3"))
    ia3_feedforward: list[Module] = Field(default_factory=lambda: ["mlp.c_proj"], description="scaled on their input",
                                          json_schema_extra=_for("ia3"))
    adapter_dim: int = Field(64, ge=1, le=65536, description="bottleneck width of the adapters",
                             json_schema_extra=_for("adapter"))
    adapter_targets: list[Module] = Field(default_factory=lambda: ["attn.c_proj", "crossattention.c_proj"],
                                          min_length=1, description="adapters after", json_schema_extra=_for("adapter"))
    virtual_tokens: int = Field(10, ge=1, le=4096, description="prompt / prefix length",
                                json_schema_extra=_for("prompt", "prefix"))
    prefix_gate: bool = Field(True, description="zero-initialised per-head gates on prompt/prefix attention",
                              json_schema_extra=_for("prompt", "prefix"))
    coverage_attention: bool = Field(False, description="cross-attention scores also see the attention each encoder "
                                     "token had at earlier positions, with a trained per-head weight starting at 0 "
                                     "(See et al. 2017's coverage mechanism)")
    patch_position: Literal["off", "sincos"] = Field(
        "off", description="where the decoder reads the encoder tokens, add each patch's place in the grid: "
                           "sincos = a fixed 2-D sine-cosine code (DETR), so that what the cross-attention "
                           "passes to a word says where it looked | off")

    @field_validator("peft")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in PEFT_KINDS:
            raise ValueError(f"unknown peft kind {v!r} (choose from {', '.join(PEFT_KINDS)})")
        return v


def kinds_of(setting: str) -> list[str] | None:
    """The PEFT kinds that read a [captioner] setting (None: every kind)."""
    extra = CaptionerConfig.__pydantic_fields__[setting].json_schema_extra
    return list(extra["peft_kinds"]) if isinstance(extra, dict) else None


class Projection(nn.Linear):
    """Encoder tokens (B, S, E) -> decoder width (B, S, C); its own type: it trains."""


class Captioner(nn.Module):
    """Images (or cached encoder tokens) + caption ids -> next-token logits."""

    def __init__(self, encoder: nn.Module | None, decoder: GPT2, cfg: CaptionerConfig, encoder_dim: int | None = None):
        super().__init__()
        if not decoder.config.cross_attention:
            raise ValueError("the decoder needs cross-attention sub-layers (load_decoder(cross_attention=True))")
        if decoder.config.coverage != cfg.coverage_attention:
            raise ValueError(f"coverage_attention={cfg.coverage_attention} needs a decoder built with "
                             f"coverage={cfg.coverage_attention} (load_decoder(coverage=...))")
        self.config = cfg
        self.encoder = encoder
        self._position_codes: dict[tuple[int, int], torch.Tensor] = {}  # (S, C) -> `PatchGrid.position_code`
        enc_dim = encoder_dim or encoder.num_features
        self.encoder_dim = enc_dim
        self.proj = Projection(enc_dim, decoder.config.n_embd)  # (B, S, E) -> (B, S, C)
        nn.init.normal_(self.proj.weight, std=enc_dim ** -0.5)
        nn.init.zeros_(self.proj.bias)
        for blk in decoder.h:  # zero output: the untrained model is exactly the language model
            nn.init.zeros_(blk.crossattention.c_proj.weight)
            nn.init.zeros_(blk.crossattention.c_proj.bias)
            blk.ln_cross_attn.reset_parameters()
        self.decoder, self.prompt, self.prefix = tuning.KINDS[cfg.peft](decoder, cfg)
        for _, p, component in parameter_components(self):
            p.requires_grad_(component != "frozen")
        wanted = {"lora": "lora", "dora": "lora", "ia3": "ia3", "adapter": "adapter"}.get(cfg.peft)
        if wanted and not any(c == wanted for _, _, c in parameter_components(self)):
            raise HW3Error(f"peft {cfg.peft!r}: no decoder module matched the targets")

    # -- forward --------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen encoder tokens (B, S, E): CLS and every patch token, final norm applied."""
        self.encoder.eval()
        return self.encoder.forward_features(images.to(self.encoder_dtype()))

    def encoder_dtype(self) -> torch.dtype:
        """The dtype the encoder's weights are stored in (half when frozen weights are, `precision.py`)."""
        return next(self.encoder.parameters()).dtype

    def prefixes(self):
        if self.prompt is not None:
            return self.prompt(self.decoder)
        if self.prefix is not None:
            return self.prefix(self.decoder)
        return None

    def cross_kv(self, feats: torch.Tensor):
        """Per-layer cross-attention keys/values from encoder tokens (computed once per image). With
        `patch_position`, each projected token (B, S, C) gets its place in the patch grid added first: the
        values, which are what a word receives, then carry where they come from, not only what is there."""
        memory = self.proj(feats.to(self.proj.weight.dtype))  # (B, S, C)
        if self.config.patch_position == "sincos":
            memory = memory + self._position(memory.shape[1], memory.shape[2]).to(memory)
        return self.decoder.cross_kv(memory)

    def _position(self, n_tokens: int, dim: int) -> torch.Tensor:
        """(S, C) the patch grid's position code, made once per token count (not a weight: not saved)."""
        if (n_tokens, dim) not in self._position_codes:
            self._position_codes[n_tokens, dim] = PatchGrid.of_tokens(n_tokens).position_code(dim)
        return self._position_codes[n_tokens, dim]

    def forward(self, feats: torch.Tensor, input_ids: torch.Tensor, need_weights: bool = False,
                packing: Packing | None = None):
        """Encoder tokens (B, S, E) + ids (B, T) -> logits (B, T, V) [, per-layer cross-attention (B, nh, T, S)].
        With `packing` (teacher forcing) only the real tokens run through the per-token layers, and the
        logits are theirs: (N, V) (`packing.py`)."""
        x = self.decoder.embed(input_ids)  # (B, T, C)
        if packing is not None:
            x = packing.pack(x)  # (N, C)
        hidden, _, atts = self.decoder.forward_hidden(x, self.cross_kv(feats), need_weights=need_weights,
                                                      prefixes=self.prefixes(), packing=packing)
        logits = self.decoder.logits(hidden)
        return (logits, atts) if need_weights else logits

    # -- trainable state ------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable(self, sd: dict[str, torch.Tensor], source="checkpoint") -> None:
        """Load exactly the trainable tensors; anything missing, extra or misshapen is an error."""
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        check_fit(own, sd, source, "checkpoint does not fit this model")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(sd[k])


def component_of(module: nn.Module) -> str | None:
    """The component a module's own parameters belong to, by its type (None: its parent's)."""
    if isinstance(module, Projection):
        return "projection"
    if isinstance(module, CrossAttention | CrossAttentionNorm):
        return "cross-attention"
    for component, types in tuning.layer_types().items():
        if isinstance(module, types):
            return component
    return None


def parameter_components(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, str]]:
    """(name, parameter, component) for every parameter, walking the module tree: a module's parameters
    belong to its own component (`component_of`) or else to its parent's; a PEFT module's
    `base_layer` keeps the component of the module it replaced (frozen, or cross-attention's)."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str, inherited: str):
        own = component_of(module) or inherited
        for name, p in module.named_parameters(prefix=prefix.rstrip("."), recurse=False):
            if id(p) not in seen:  # a tied parameter (the LM head's) is counted once
                seen.add(id(p))
                yield name, p, own
        for name, child in module.named_children():
            yield from walk(child, f"{prefix}{name}.", inherited if name == "base_layer" else own)

    yield from walk(model, "", "frozen")


def parameter_report(model: Captioner) -> dict[str, int]:
    """Parameter counts per component, plus `trainable` and `frozen` totals."""
    out: dict[str, int] = {}
    for _, p, c in parameter_components(model):
        out[c] = out.get(c, 0) + p.numel()
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["frozen"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return out


def format_report(report: dict[str, int]) -> str:
    parts = [f"{k} {v:,}" for k, v in report.items() if k not in ("trainable", "frozen")]
    return f"trainable {report['trainable']:,} ({', '.join(parts)}); frozen {report['frozen']:,}"


def check_budget(model: Captioner, max_trainable: int) -> int:
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n > max_trainable:
        raise HW3Error(f"{n:,} trainable parameters exceed the budget of {max_trainable:,} "
                       f"(the course limit is 35M; raise it with --max_trainable=N if you mean to)")
    return n


# ----------------------------------------------------------------------------------------------
# checkpoints: trainable tensors + the config that rebuilds the model, in one safetensors file


def save_checkpoint(path: str | os.PathLike, model: Captioner, meta: dict | None = None) -> None:
    from ..core.weights import save_safetensors

    metadata = {"format": CHECKPOINT_FORMAT, "captioner": json.dumps(asdict(model.config)),
                "decoder": json.dumps(asdict(model.decoder.config)), "encoder_dim": str(model.encoder_dim),
                "meta": json.dumps(meta or {})}
    save_safetensors(model.trainable_state_dict(), path, metadata)


def read_checkpoint(path: str | os.PathLike) -> tuple[CaptionerConfig, dict[str, torch.Tensor], dict]:
    """(config, trainable tensors, metadata) of a captioner checkpoint; never unpickles anything."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint-best.safetensors"
    if not path.is_file():
        raise HW3Error(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:
        raise HW3Error(f"{path}: not a readable safetensors checkpoint ({first_line(e, 160)})") from e
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise HW3Error(f"{path}: not an hw3lib captioner checkpoint (format {metadata.get('format')!r})")
    raw = {key: _metadata_json(metadata, key, path, kind) for key, kind in (("captioner", dict), ("decoder", dict),
                                                                           ("encoder_dim", int), ("meta", dict))}
    try:
        cfg = CaptionerConfig(**raw["captioner"])
    except ValidationError as e:  # an unknown or missing key, a type or a range
        raise invalid(e, f"{path}: metadata field 'captioner'") from e
    if not 1 <= raw["encoder_dim"] <= 65536:
        raise HW3Error(f"{path}: metadata field 'encoder_dim' = {raw['encoder_dim']} is outside 1..65536")
    check_tensors(tensors, path, "captioner weights")
    return cfg, tensors, {"decoder": raw["decoder"], "encoder_dim": raw["encoder_dim"], "meta": raw["meta"]}


def _metadata_json(metadata: dict, key: str, path, kind):
    """One JSON field of a checkpoint's metadata, of the given type (an int is stored as text)."""
    if key not in metadata:
        raise HW3Error(f"{path}: metadata field {key!r} is missing")
    try:
        value = json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError) as e:
        raise HW3Error(f"{path}: metadata field {key!r} is not valid JSON ({first_line(e)})") from e
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HW3Error(f"{path}: metadata field {key!r} should be a {kind.__name__}, got {type(value).__name__}")
    return value


def meta_captioner(manifest, cap_cfg):
    """The captioner of `cap_cfg` on the meta device: the manifest's encoder architecture and the
    decoder shapes of its weights file; nothing is read but the file's tensor shapes."""
    from .decoder_file import decoder_config
    from .gpt2 import GPT2
    from .loading import create_encoder

    encoder = create_encoder(manifest.encoder, "meta")
    cfg = decoder_config(manifest.decoder.weights, manifest.decoder.n_head, cross_attention=True,
                         coverage=cap_cfg.coverage_attention)
    with torch.device("meta"):
        return Captioner(encoder, GPT2(cfg), cap_cfg)


def check_checkpoint_size(manifest, cfg: CaptionerConfig, tensors: dict[str, torch.Tensor], source) -> None:
    """Before building: the model the metadata describes has as many trainable parameters as the file
    holds (the metadata alone could describe any size; the tensors are bounded by the file)."""
    want = sum(p.numel() for p in meta_captioner(manifest, cfg).parameters() if p.requires_grad)
    have = sum(t.numel() for t in tensors.values())
    if want != have:
        raise HW3Error(f"{source}: its metadata describes a captioner with {want:,} trainable parameters, the file "
                       f"holds {have:,} (metadata and tensors disagree)")


def build_captioner(manifest, cfg: CaptionerConfig, device="cpu", with_encoder: bool = True,
                    precision: Precision | None = None) -> Captioner:
    """The captioner from an asset manifest: its timm encoder and its decoder weights file. Under a
    half `precision` the frozen weights are stored in half (`precision.store_frozen`)."""
    from .loading import create_encoder, load_decoder_from_manifest

    storage = precision.storage if precision is not None else None
    encoder = create_encoder(manifest.encoder, device, dtype=storage) if with_encoder else None
    enc_dim = None
    if encoder is None:
        enc_dim = create_encoder(manifest.encoder, "meta").num_features
    decoder = load_decoder_from_manifest(manifest, cross_attention=True, coverage=cfg.coverage_attention)
    model = Captioner(encoder, decoder, cfg, encoder_dim=enc_dim).to(device)
    return store_frozen(model, precision) if precision is not None else model
