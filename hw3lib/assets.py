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

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .files import HW3Error, atomic_write_json, first_line, kind_of, read_json
from .weights import assign_weights, empty_model, read_state_dict

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
    clip: ClipSpec | None  # each section may be left out where no command that uses it runs
    encoder: EncoderSpec | None
    decoder: DecoderSpec | None
    tokenizer: TokenizerSpec | None
    source: str = "<memory>"  # where it was read from (for messages)

    def to_dict(self) -> dict:
        """The JSON form; a section left out (None) is written as missing, as the reader expects."""
        d = asdict(self)
        d.pop("source")
        return {k: v for k, v in d.items() if v is not None}

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
    """A manifest from its JSON. Sections may be missing (a command checks for the ones it uses,
    `require_parts`); every field is checked for its type and range before anything uses it."""
    if not isinstance(raw, dict):
        raise HW3Error(f"{source}: expected a JSON object with clip, encoder, decoder and/or tokenizer sections")
    specs = {"clip": ClipSpec, "encoder": EncoderSpec, "decoder": DecoderSpec, "tokenizer": TokenizerSpec}
    unknown = set(raw) - set(specs)
    if unknown:
        raise HW3Error(f"{source}: unknown section(s): {', '.join(sorted(unknown))}")
    parts = {}
    for key, cls in specs.items():
        if key not in raw:
            parts[key] = None
            continue
        if not isinstance(raw[key], dict):
            raise HW3Error(f"{source}: section {key!r} is not an object")
        unknown = set(raw[key]) - set(cls.__dataclass_fields__)
        if unknown:
            raise HW3Error(f"{source}: unknown key(s) in {key!r}: {', '.join(sorted(unknown))}")
        try:
            parts[key] = cls(**raw[key])
        except TypeError as e:
            raise HW3Error(f"{source}: section {key!r}: {e}") from e
        _check_field_types(parts[key], f"{source}: {key}")
    m = Manifest(**parts, source=source)
    _check_ranges(m, source)
    # file paths are relative to the manifest; hub tags stay as they are
    if m.clip is not None:
        if _looks_like_path(m.clip.pretrained) or (m.clip.pretrained and (base / m.clip.pretrained).is_file()):
            m.clip.pretrained = _resolve(base, m.clip.pretrained)
        m.clip.config = _resolve(base, m.clip.config)
    if m.encoder is not None:
        m.encoder.checkpoint = _resolve(base, m.encoder.checkpoint)
    if m.decoder is not None:
        m.decoder.weights = _resolve(base, m.decoder.weights)
    if m.tokenizer is not None:
        m.tokenizer.encoder_json = _resolve(base, m.tokenizer.encoder_json)
        m.tokenizer.vocab_bpe = _resolve(base, m.tokenizer.vocab_bpe)
    return m


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
MAX_INPUT_SIDE = 4096  # pixels a side an encoder may ask images to be resized to


def _check_ranges(m: Manifest, source: str) -> None:
    """What a manifest says about sizes and preprocessing, checked before any model is built."""
    def bad(field, value, want):
        raise HW3Error(f"{source}: {field} = {value!r}: expected {want}")

    def number(v):
        import math

        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if m.decoder is not None and m.decoder.n_head is not None and not 1 <= m.decoder.n_head <= 1024:
        bad("decoder.n_head", m.decoder.n_head, "a head count from 1 to 1024 (or null)")
    if m.tokenizer is not None and m.tokenizer.vocab_size is not None and not 1 <= m.tokenizer.vocab_size <= 1_000_000:
        bad("tokenizer.vocab_size", m.tokenizer.vocab_size, "1 to 1,000,000 (or null)")
    if m.encoder is None:
        return
    cfg, kw = m.encoder.pretrained_cfg, m.encoder.model_kwargs
    where = "encoder.pretrained_cfg"
    if "input_size" in cfg:
        v = cfg["input_size"]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                and v[0] == 3 and all(1 <= x <= MAX_INPUT_SIDE for x in v[1:])):
            bad(f"{where}.input_size", v, f"[3, height, width] with sides 1..{MAX_INPUT_SIDE}")
    for key in ("mean", "std"):
        if key in cfg:
            v = cfg[key]
            if not (isinstance(v, list) and len(v) == 3 and all(number(x) for x in v)
                    and (key == "mean" or all(x > 0 for x in v))):
                bad(f"{where}.{key}", v, "three numbers" + (", each above 0" if key == "std" else ""))
    if "interpolation" in cfg and cfg["interpolation"] not in INTERPOLATIONS:
        bad(f"{where}.interpolation", cfg["interpolation"], "one of " + ", ".join(INTERPOLATIONS))
    if "crop_pct" in cfg and not (number(cfg["crop_pct"]) and 0 < cfg["crop_pct"] <= 1):
        bad(f"{where}.crop_pct", cfg["crop_pct"], "a number in (0, 1]")
    for key in ("num_classes",):
        for table, d in ((where, cfg), ("encoder.model_kwargs", kw)):
            if key in d and not (isinstance(d[key], int) and not isinstance(d[key], bool) and 0 <= d[key] <= 1_000_000):
                bad(f"{table}.{key}", d[key], "an integer from 0")
    if "img_size" in kw:
        v = kw["img_size"]
        sides = v if isinstance(v, list) else [v]
        if not (1 <= len(sides) <= 2 and all(isinstance(x, int) and 1 <= x <= MAX_INPUT_SIDE for x in sides)):
            bad("encoder.model_kwargs.img_size", v, f"an image side (or [height, width]) of 1..{MAX_INPUT_SIDE}")


def require_parts(m: Manifest, parts, command: str = "this command") -> None:
    """The named sections must be present."""
    missing = [p for p in parts if getattr(m, p) is None]
    if missing:
        raise HW3Error(f"{m.source}: no {', '.join(repr(p) for p in missing)} section ({command} needs "
                       f"{', '.join(parts)})")


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read an assets.json; `real` gives the built-in manifest of the real HW3 set-up."""
    if str(path) == "real":
        return manifest_from_dict(json.loads(json.dumps(REAL_MANIFEST)), Path.cwd(), "built-in 'real' manifest")
    path = Path(path)
    return manifest_from_dict(read_json(path), path.parent.resolve(), str(path))


MANIFEST_PARTS = ("clip", "encoder", "decoder", "tokenizer")


def manifest_files(m: Manifest, parts=MANIFEST_PARTS) -> list[tuple[str, str]]:
    """(field, path) of every local file that the named parts of the manifest use (parts the manifest
    leaves out have none)."""
    parts = [p for p in parts if getattr(m, p) is not None]
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


def manifest_inputs(assets) -> list:
    """The manifest file and the local files it names."""
    if str(assets) == "real" or not Path(assets).is_file():
        return []
    try:
        return [assets] + [path for _, path in manifest_files(load_manifest(assets))]
    except HW3Error:
        return [assets]


def check_files(m: Manifest, parts=MANIFEST_PARTS) -> None:
    """The named parts must be there, and every local file they use must exist (hub tags are not checked)."""
    require_parts(m, parts)
    bad = [f"{k} = {v}" + ("" if not Path(v).exists() else f" (it is {kind_of(Path(v))}, not a file)")
           for k, v in manifest_files(m, parts) if not Path(v).is_file()]
    if bad:
        raise HW3Error(f"{m.source}: missing file(s): {'; '.join(bad)}")


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
