"""The asset manifest (`assets.json`) and loaders for the models it names.

A manifest names four things; relative paths are resolved against the manifest's own folder:

```json
{
  "clip":      {"model": "ViT-B-32", "pretrained": "openai", "config": null},
  "encoder":   {"model": "vit_large_patch14_clip_224", "checkpoint": null, "hub_tag": "openai",
                "model_kwargs": {}, "pretrained_cfg": {}},
  "decoder":   {"weights": "hw3_data/p2_data/decoder_model.bin", "n_head": 12},
  "tokenizer": {"encoder_json": "encoder.json", "vocab_bpe": "vocab.bpe", "vocab_size": 50257}
}
```

- clip: an open_clip model name; `pretrained` is a tag (hub) or a local checkpoint path; `config` an
  optional open_clip model-config JSON registered under the model name (for architectures open_clip
  does not ship, like the demo's tiny CLIP).
- encoder: a timm model name with a local `checkpoint` (loaded through timm's own checkpoint filter, so
  OpenAI/open_clip-format CLIP files convert as they do for real models) or a `hub_tag`;
  `model_kwargs` and `pretrained_cfg` (preprocessing: input_size, mean, std, interpolation,
  crop_pct) override timm's defaults.
- decoder: the course-format GPT-2 weights file; tokenizer: GPT-2's two BPE files.

`--assets real` selects the built-in manifest of the real HW3 set-up (hub names; decoder and
tokenizer files relative to the working directory).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .files import HW3Error, atomic_write_json, first_line, read_json

REAL_MANIFEST = {
    "clip": {"model": "ViT-B-32", "pretrained": "openai", "config": None},
    "encoder": {"model": "vit_gigantic_patch14_clip_224", "checkpoint": None, "hub_tag": "laion2b",
                "model_kwargs": {}, "pretrained_cfg": {}},
    "decoder": {"weights": "hw3_data/p2_data/decoder_model.bin", "n_head": 12},
    "tokenizer": {"encoder_json": "encoder.json", "vocab_bpe": "vocab.bpe", "vocab_size": 50257},
}


@dataclass
class ClipSpec:
    model: str  # open_clip model name (e.g. ViT-B-32)
    pretrained: str | None = None  # hub tag (e.g. openai) or local checkpoint path
    config: str | None = None  # open_clip model-config JSON to register, for custom architectures


@dataclass
class EncoderSpec:
    model: str  # timm model name
    checkpoint: str | None = None  # local weights file (timm format or OpenAI/open_clip CLIP format)
    hub_tag: str | None = None  # timm pretrained tag, used when there is no local checkpoint
    model_kwargs: dict = field(default_factory=dict)  # architecture overrides passed to timm
    pretrained_cfg: dict = field(default_factory=dict)  # preprocessing overrides (input_size, mean, ...)


@dataclass
class DecoderSpec:
    weights: str  # course-format decoder weights file
    n_head: int | None = None  # heads (the file does not store it; None = GPT-2's 64-wide heads)


@dataclass
class TokenizerSpec:
    encoder_json: str  # GPT-2 encoder.json
    vocab_bpe: str  # GPT-2 vocab.bpe
    vocab_size: int | None = None  # asserted on load when given (50257 for GPT-2)


@dataclass
class Manifest:
    clip: ClipSpec
    encoder: EncoderSpec
    decoder: DecoderSpec
    tokenizer: TokenizerSpec
    source: str = "<memory>"  # where it was read from (for messages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return d

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _looks_like_path(value: str | None) -> bool:
    return value is not None and (os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")))


_FIELD_TYPES = {"str": (str,), "str | None": (str, type(None)), "int | None": (int, type(None)), "dict": (dict,)}


def _check_field_types(spec, where: str) -> None:
    """Each manifest field must have its annotated type (a string where a path goes, an int for n_head)."""
    for name, f in spec.__dataclass_fields__.items():
        value, allowed = getattr(spec, name), _FIELD_TYPES[str(f.type)]
        if isinstance(value, bool) or not isinstance(value, allowed):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise HW3Error(f"{where}.{name}: expected {want}, got {type(value).__name__} ({value!r})")


def manifest_from_dict(raw: dict, base: Path, source: str) -> Manifest:
    if not isinstance(raw, dict):
        raise HW3Error(f"{source}: expected a JSON object with clip, encoder, decoder and tokenizer")
    specs = {"clip": ClipSpec, "encoder": EncoderSpec, "decoder": DecoderSpec, "tokenizer": TokenizerSpec}
    parts = {}
    for key, cls in specs.items():
        if key not in raw or not isinstance(raw[key], dict):
            raise HW3Error(f"{source}: missing section {key!r}")
        fields = set(cls.__dataclass_fields__)
        unknown = set(raw[key]) - fields
        if unknown:
            raise HW3Error(f"{source}: unknown key(s) in {key!r}: {', '.join(sorted(unknown))}")
        try:
            parts[key] = cls(**raw[key])
        except TypeError as e:
            raise HW3Error(f"{source}: section {key!r}: {e}") from None
        _check_field_types(parts[key], f"{source}: {key}")
    unknown = set(raw) - set(specs)
    if unknown:
        raise HW3Error(f"{source}: unknown section(s): {', '.join(sorted(unknown))}")
    m = Manifest(**parts, source=source)
    # file paths are relative to the manifest; hub tags stay as they are
    if _looks_like_path(m.clip.pretrained) or (m.clip.pretrained and (base / m.clip.pretrained).is_file()):
        m.clip.pretrained = _resolve(base, m.clip.pretrained)
    m.clip.config = _resolve(base, m.clip.config)
    m.encoder.checkpoint = _resolve(base, m.encoder.checkpoint)
    m.decoder.weights = _resolve(base, m.decoder.weights)
    m.tokenizer.encoder_json = _resolve(base, m.tokenizer.encoder_json)
    m.tokenizer.vocab_bpe = _resolve(base, m.tokenizer.vocab_bpe)
    return m


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read an assets.json; `real` gives the built-in manifest of the real HW3 set-up."""
    if str(path) == "real":
        return manifest_from_dict(json.loads(json.dumps(REAL_MANIFEST)), Path.cwd(), "built-in 'real' manifest")
    path = Path(path)
    return manifest_from_dict(read_json(path), path.parent.resolve(), str(path))


MANIFEST_PARTS = ("clip", "encoder", "decoder", "tokenizer")


def manifest_files(m: Manifest, parts=MANIFEST_PARTS) -> list[tuple[str, str]]:
    """(field, path) of every local file that the named parts of the manifest use."""
    files = []
    if "decoder" in parts:
        files.append(("decoder.weights", m.decoder.weights))
    if "tokenizer" in parts:
        files += [("tokenizer.encoder_json", m.tokenizer.encoder_json), ("tokenizer.vocab_bpe", m.tokenizer.vocab_bpe)]
    if "encoder" in parts:
        files.append(("encoder.checkpoint", m.encoder.checkpoint))
    if "clip" in parts:
        files.append(("clip.config", m.clip.config))
        if _looks_like_path(m.clip.pretrained):
            files.append(("clip.pretrained", m.clip.pretrained))
    return [(k, v) for k, v in files if v is not None]


def check_files(m: Manifest, parts=MANIFEST_PARTS) -> None:
    """Every local file that the named parts of the manifest use must exist (hub tags are not checked)."""
    missing = [f"{k} = {v}" for k, v in manifest_files(m, parts) if not Path(v).is_file()]
    if missing:
        raise HW3Error(f"{m.source}: missing file(s): {'; '.join(missing)}")


# ----------------------------------------------------------------------------------------------
# loaders


def load_tokenizer(m: Manifest):
    from .tokenizer import load_gpt2_tokenizer

    return load_gpt2_tokenizer(m.tokenizer.encoder_json, m.tokenizer.vocab_bpe, m.tokenizer.vocab_size)


def load_decoder_from_manifest(m: Manifest, cross_attention: bool = False):
    from .decoder import load_decoder

    return load_decoder(m.decoder.weights, n_head=m.decoder.n_head, cross_attention=cross_attention)


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
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=pretrained, device=device)
    except RuntimeError as e:
        raise HW3Error(f"{pretrained}: checkpoint does not fit {spec.model} ({first_line(e)})") from None
    except Exception as e:  # download failures, bad tags, corrupt files
        raise HW3Error(f"cannot load CLIP {spec.model} / {pretrained}: {first_line(e)}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.model)
    ctx = int(getattr(tokenizer, "context_length", 77) or 77)
    return ClipBundle(model, preprocess, tokenizer, ctx)


def create_encoder(spec: EncoderSpec, device: str | torch.device = "cpu", pretrained: bool = True):
    """The frozen caption encoder (a timm ViT) in eval mode, plus its own preprocessing config.

    With `pretrained=False` (or device "meta") the architecture is built with random weights, for
    shape checks without a hub or a checkpoint.
    """
    import timm

    kwargs = dict(spec.model_kwargs)
    use_weights = pretrained and str(device) != "meta" and (spec.checkpoint or spec.hub_tag)
    name = spec.model
    overlay = dict(spec.pretrained_cfg)
    if use_weights and spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise HW3Error(f"{spec.checkpoint}: encoder checkpoint not found")
        overlay["file"] = spec.checkpoint
    elif use_weights and spec.hub_tag:
        name = f"{spec.model}.{spec.hub_tag}"
    try:
        if str(device) == "meta":
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, pretrained_cfg_overlay=overlay or None, **kwargs)
        else:
            model = timm.create_model(name, pretrained=bool(use_weights), pretrained_cfg_overlay=overlay or None,
                                      **kwargs)
    except RuntimeError as e:
        raise HW3Error(f"{spec.checkpoint or name}: weights do not fit timm model {spec.model} ({first_line(e)})") from None
    except Exception as e:
        raise HW3Error(f"cannot build timm encoder {name}: {first_line(e)}") from None
    model.eval().requires_grad_(False)
    if str(device) != "meta":
        model.to(device)
    return model


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
