"""The models an asset manifest (`core/manifest.py`) names, loaded with one copy of their weights:
the tokenizer, the course-format decoder, open_clip's CLIP (a tag or a local checkpoint) and a timm
image encoder (a local checkpoint through timm's own filter, or a hub tag).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import HW3Error, first_line
from ..core.files import read_json
from ..core.manifest import ClipSpec, EncoderSpec, Manifest, _looks_like_path
from ..core.weights import assign_weights, empty_model, read_state_dict

# ----------------------------------------------------------------------------------------------
# loaders


def load_tokenizer(m: Manifest):
    from ..core.tokenizer import load_gpt2_tokenizer

    return load_gpt2_tokenizer(m.tokenizer.encoder_json, m.tokenizer.vocab_bpe, m.tokenizer.vocab_size)


def load_decoder_from_manifest(m: Manifest, cross_attention: bool = False, coverage: bool = False):
    """The decoder of a manifest, checked against its tokenizer: one vocabulary for both."""
    from .decoder_file import load_decoder

    model = load_decoder(m.decoder.weights, n_head=m.decoder.n_head, cross_attention=cross_attention,
                         coverage=coverage)
    if m.tokenizer is not None:
        tokens = m.tokenizer.vocab_size
        if tokens is None:
            from ..core.files import read_json

            encoder = read_json(m.tokenizer.encoder_json)
            tokens = len(encoder) if isinstance(encoder, dict) else None
        if tokens is not None and model.config.vocab_size != tokens:
            raise HW3Error(f"{m.decoder.weights}: decoder with a vocabulary of {model.config.vocab_size} tokens, but the "
                           f"tokenizer ({m.tokenizer.encoder_json}) has {tokens}: they must come from one model")
    return model


def register_clip_config(config_path: str | os.PathLike, name: str) -> None:
    """Register an open_clip model config JSON under `name` (idempotent)."""
    import tempfile

    import open_clip

    cfg = read_json(config_path)
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise HW3Error(f"{config_path}: not an open_clip model config (needs vision_cfg and text_cfg)")
    with tempfile.TemporaryDirectory() as tmp:  # add_model_config names a model after its file
        named = Path(tmp) / f"{name}.json"
        named.write_text(json.dumps(cfg), encoding="utf-8")
        open_clip.add_model_config(named)
    if name not in open_clip.list_models():
        raise HW3Error(f"{config_path}: open_clip did not register it as {name!r}")


@dataclass
class ClipBundle:
    model: torch.nn.Module  # open_clip CLIP (encode_image / encode_text)
    preprocess: object  # the model's own eval transform (PIL -> tensor)
    tokenizer: object  # open_clip tokenizer (list[str] -> (N, context_length) ids)
    context_length: int  # text tokens the model takes


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> ClipBundle:
    """An open_clip model by name + pretrained tag or local checkpoint, in eval mode."""
    import open_clip

    if spec.config:
        register_clip_config(spec.config, spec.model)
    if spec.model not in open_clip.list_models():
        raise HW3Error(f"unknown open_clip model {spec.model!r} (give a config file for custom models)")
    pretrained = spec.pretrained
    if _looks_like_path(pretrained) and not Path(pretrained).is_file():
        raise HW3Error(f"{pretrained}: CLIP checkpoint not found")
    try:  # open_clip resolves the architecture and the preprocessing of the tag or file; weights below
        with empty_model() if pretrained else contextlib.nullcontext(), _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=pretrained,
                                                                         load_weights=False, device=None)
        path = pretrained if not pretrained or Path(pretrained).is_file() else open_clip.download_pretrained(
            open_clip.get_pretrained_cfg(spec.model, pretrained))
    except Exception as e:  # download failures, bad tags
        raise HW3Error(f"cannot load CLIP {spec.model} / {pretrained}: {first_line(e)}") from e
    if path:
        sd = _open_clip_state_dict(model, read_state_dict(path, "CLIP checkpoint"))
        assign_weights(model, sd, path, f"checkpoint does not fit open_clip {spec.model}")
        del sd
    model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(spec.model)
    ctx = int(getattr(tokenizer, "context_length", 77) or 77)
    return ClipBundle(model, preprocess, tokenizer, ctx)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs "No pretrained weights loaded" when asked to build without them, as we ask
    (the weights are assigned afterwards), and logs a failed download before raising it (we raise it
    as one line); those messages are dropped."""
    import logging

    def keep(record):
        return not record.getMessage().startswith(("No pretrained weights loaded", "Failed to download"))

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _open_clip_state_dict(model, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The conversions of `open_clip.load_checkpoint` (third-party and older layouts, scalar logit
    scale, position-embedding resizing), without its copy into a randomly initialised model."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    if next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in sd and own is not None and own.ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(own.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    return sd


def create_encoder(spec: EncoderSpec, device: str | torch.device = "cpu", pretrained: bool = True,
                   dtype: torch.dtype | None = None):
    """The frozen caption encoder (a timm ViT) in eval mode, with its own preprocessing config.

    Weights come from the local `checkpoint` or the hub tag, through timm's checkpoint filter of the
    architecture (so OpenAI/open_clip-format CLIP files convert as timm converts them); the model is
    built with empty parameters and the file's tensors become them, so loading holds one copy of the
    weights (`weights.py`). `dtype` stores them in that precision (half on a GPU that runs them so).
    With `pretrained=False` the architecture gets random weights; with device "meta" it has no
    weights at all (shape checks and memory plans, without a hub or a checkpoint).
    """
    import timm

    on_meta = str(device) == "meta"
    load = pretrained and not on_meta and bool(spec.checkpoint or spec.hub_tag)
    if load and spec.checkpoint and not Path(spec.checkpoint).is_file():
        raise HW3Error(f"{spec.checkpoint}: encoder checkpoint not found")
    name = f"{spec.model}.{spec.hub_tag}" if spec.hub_tag and not spec.checkpoint else spec.model
    overlay = dict(spec.pretrained_cfg)
    try:
        with empty_model() if load or on_meta else contextlib.nullcontext():
            model = timm.create_model(name, pretrained=False, pretrained_cfg_overlay=overlay or None,
                                      **spec.model_kwargs)
    except Exception as e:
        raise HW3Error(f"cannot build timm encoder {name}: {first_line(e)}") from e
    if load:
        source = spec.checkpoint or f"timm hub weights {name}"
        sd = _encoder_state_dict(spec, model, source)
        assign_weights(model, sd, source, f"weights do not fit timm model {spec.model}", _head_hint(model, sd))
        del sd
    model.eval().requires_grad_(False)
    if not on_meta:
        model.to(device=device, dtype=dtype)
    return model


def _encoder_state_dict(spec: EncoderSpec, model, source) -> dict[str, torch.Tensor]:
    """The encoder's tensors from its checkpoint or hub tag, after timm's filter for the architecture
    (the `checkpoint_filter_fn` of the model's own timm module) and with a classifier the model does
    not have dropped, as timm's own loading does."""
    import sys

    if spec.checkpoint:
        sd = read_state_dict(spec.checkpoint, "encoder checkpoint")
    else:
        hub_id = model.pretrained_cfg.get("hf_hub_id")
        if not hub_id:
            raise HW3Error(f"timm tag {spec.model}.{spec.hub_tag} has no hub weights; give encoder.checkpoint")
        try:
            from timm.models import load_state_dict_from_hf

            sd = load_state_dict_from_hf(hub_id, weights_only=True)
        except Exception as e:
            raise HW3Error(f"cannot load {source} ({hub_id}): {first_line(e)}") from e
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception as e:  # a file of another architecture can fail inside the conversion
            raise HW3Error(f"{source}: weights do not fit timm model {spec.model} (timm's conversion failed: "
                           f"{first_line(e)})") from e
    for k in _head_keys(model) - set(model.state_dict()):  # the model has no head (num_classes=0)
        sd.pop(k, None)
    return sd


def _head_keys(model) -> set[str]:
    """The state-dict keys of the model's classifier / projection head, as its pretrained_cfg names it."""
    c = model.pretrained_cfg.get("classifier") or ()
    return {f"{name}.{p}" for name in ((c,) if isinstance(c, str) else c) for p in ("weight", "bias")}


def _head_hint(model, sd) -> str:
    """When only the head is missing from the file: say how to build the encoder without it."""
    missing = set(model.state_dict()) - set(sd)
    if missing and missing <= _head_keys(model):
        return ("; the captioner uses no head: set encoder.model_kwargs.num_classes = 0 in the manifest to build "
                "the encoder without it")
    return ""


def encoder_data_config(model) -> dict:
    """The encoder's own preprocessing (input_size, mean, std, interpolation, crop_pct)."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    # manifests give lists (JSON); timm's own configs give tuples - normalise to tuples
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def encoder_transform(model):
    """timm's evaluation transform built from the encoder's config (training adds its augmentation on
    top: `train.augmentation_transform`)."""
    import timm.data

    return timm.data.create_transform(**encoder_data_config(model), is_training=False)
