"""The asset manifest (`assets.json`): which models to use and where their files are (the loaders: `models/loading.py`).

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from .errors import HW3Error, invalid
from .files import atomic_write_json, kind_of, read_json

# a manifest section: strict types (a string where a path goes, an int for n_head), no unknown keys
spec = pydantic_dataclass(config=ConfigDict(strict=True, extra="forbid"))

REAL_MANIFEST = {
    "clip": {"model": "ViT-B-32", "pretrained": "openai", "config": None},
    "encoder": {"model": "vit_gigantic_patch14_clip_224", "checkpoint": None, "hub_tag": "laion2b",
                "model_kwargs": {}, "pretrained_cfg": {}},
    "decoder": {"weights": "hw3_data/p2_data/decoder_model.bin", "n_head": 12},
    "tokenizer": {"encoder_json": "encoder.json", "vocab_bpe": "vocab.bpe", "vocab_size": 50257},
}


@spec
class ClipSpec:
    model: str  # open_clip model name (e.g. ViT-B-32)
    pretrained: str | None = None  # hub tag (e.g. openai) or local checkpoint path
    config: str | None = None  # open_clip model-config JSON to register, for custom architectures


@spec
class EncoderSpec:
    model: str  # timm model name
    checkpoint: str | None = None  # local weights file (timm format or OpenAI/open_clip CLIP format)
    hub_tag: str | None = None  # timm pretrained tag, used when there is no local checkpoint
    model_kwargs: dict[str, Any] = Field(default_factory=dict)  # architecture overrides passed to timm
    pretrained_cfg: dict[str, Any] = Field(default_factory=dict)  # preprocessing overrides (input_size, mean, ...)


@spec
class DecoderSpec:
    weights: str  # course-format decoder weights file
    n_head: int | None = Field(None, ge=1, le=1024)  # heads (not in the file; None = GPT-2's 64-wide heads)


@spec
class TokenizerSpec:
    encoder_json: str  # GPT-2 encoder.json
    vocab_bpe: str  # GPT-2 vocab.bpe
    vocab_size: int | None = Field(None, ge=1, le=1_000_000)  # asserted on load when given (50257 for GPT-2)


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
        try:
            parts[key] = cls(**raw[key])
        except ValidationError as e:
            raise invalid(e, source, key) from None
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
    """What the encoder's open tables (`pretrained_cfg`, `model_kwargs`, passed on to timm) say about sizes
    and preprocessing, checked before any model is built."""
    def bad(field, value, want):
        raise HW3Error(f"{source}: {field} = {value!r}: expected {want}")

    def number(v):
        import math

        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

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
