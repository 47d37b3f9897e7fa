"""Run configuration: the [captioner] and [train] tables of a TOML file, `--key=value` overrides,
their types and ranges (checked before any work), and the settings list `hw3 train --help` shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ..core.errors import HW3Error, invalid
from ..models.captioner import CaptionerConfig

BIG = 10**9  # bound of every count that has no natural one


@pydantic_dataclass(config=ConfigDict(strict=True, extra="forbid"))
class TrainConfig:
    """The [train] table. Checked on construction (types, ranges, finite numbers); `hw3 train --help` lists
    the descriptions."""
    epochs: int = Field(10, ge=1, le=BIG, description="passes over every (image, caption) pair")
    batch_size: int = Field(8, ge=1, le=BIG, description="pairs per micro-batch (per process)")
    grad_accum: int = Field(1, ge=1, le=BIG, description="micro-batches per optimiser step")
    lr: float = Field(3e-5, gt=0, allow_inf_nan=False, description="AdamW peak learning rate")
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, le=BIG, description="linear warm-up, in optimiser steps")
    eta_min: float = Field(1e-6, ge=0, allow_inf_nan=False, description="floor of the cosine annealing (at most lr)")
    grad_clip: float = Field(1.0, ge=0, allow_inf_nan=False, description="max gradient norm (0 = off)")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="auto (bf16 from compute capability 8.0, fp16 + loss scaling below, fp32 on CPU) | off | "
                            "bf16 | fp16")
    hflip: float = Field(0.0, ge=0, le=1, description="horizontal-flip probability (augmentation): the image "
                         "mirrored with its caption's flip_swaps words swapped and its boxes mirrored")
    flip_swaps: list[str] = Field(default_factory=lambda: ["left:right"], description="word pairs a flipped "
                                  "image's caption swaps, as word:word (VirTex and MDETR swap left and right)")
    color_jitter: float = Field(0.0, ge=0, allow_inf_nan=False,
                                description="colour-jitter strength for brightness/contrast/saturation (0 = off)")
    feature_cache: bool = Field(True, description="cache frozen encoder tokens on disk (only without augmentation)")
    cache_dir: str = Field("", description='where the cache lives ("" = RUN_DIR/../feature-cache)')
    max_caption_tokens: int = Field(60, ge=2, le=65_536, description="longest caption in tokens (+1 for the end token)")
    max_trainable: int = Field(35_000_000, ge=1, le=10**12,
                               description="refuse to train above this many trainable parameters")
    val_every: int = Field(0, ge=0, le=BIG, description="optimiser steps between validations (0 = once per epoch)")
    select_images: int = Field(100, ge=1, le=BIG, description="training images held out (never trained on) to "
                               "validate on and choose the best checkpoint; no val image chooses it")
    select_metric: Literal["cider", "loss"] = Field(
        "cider", description="best checkpoint by: cider | loss (cider needs a validator)")
    no_repeat_ngram_size: int = Field(0, ge=0, le=BIG, description="validation and val_predictions captions: ban "
                                                                   "repeated n-grams (0 = off)")
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False, description="validation and val_predictions "
                                      "captions: transformers' penalty (1 = off)")
    coverage: Literal["off", "see", "doubly-stochastic"] = Field(
        "off", description="a loss on the cross-attention against repeats and omissions (no boxes needed): see "
                           "(See et al. 2017: attention again where the caption looked) | doubly-stochastic (Xu et al. "
                           "2015: every encoder token attended about once) | off")
    coverage_weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="weight of the coverage loss")
    attention_supervision: float = Field(0.0, ge=0, allow_inf_nan=False, description="weight of attention "
                                         "supervision: -log attention inside the named object's box at its phrase "
                                         "(Liu et al. 2017; needs p2_data/boxes.json; 0 = off)")
    unlikelihood: float = Field(0.0, ge=0, allow_inf_nan=False, description="weight of unlikelihood training "
                                "against naming an object noun the caption already named (Welleck et al. 2019; needs "
                                "p2_data/boxes.json for the object words; 0 = off)")
    max_steps: int = Field(0, ge=0, le=BIG, description="stop after this many optimiser steps (0 = run all epochs)")
    patience: int = Field(0, ge=0, le=BIG, description="early stopping: stop after this many validations in a row "
                          "without a new best on the held-out images (the learning curve stopped rising; 0 = off)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="data order, initialisation of new modules")
    log_every: int = Field(10, ge=1, le=BIG, description="optimiser steps between log lines")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dist_timeout: int = Field(300, ge=1, le=86_400, description="seconds a distributed run (torchrun) waits for its "
                                                               "processes before giving up")

    @model_validator(mode="after")
    def _floor_below_peak(self):
        if self.eta_min > self.lr:
            raise ValueError(f"eta_min={self.eta_min} is above lr={self.lr}")
        self.controls  # noqa: B018 - the decoding controls check their own ranges
        return self

    @field_validator("flip_swaps")
    @classmethod
    def _word_pairs(cls, v: list[str]) -> list[str]:
        from .mirror import parse_swaps

        try:
            parse_swaps(v)
        except HW3Error as e:
            raise ValueError(str(e).removeprefix("flip_swaps: ")) from None
        return v

    @property
    def augment(self) -> bool:
        return self.hflip > 0 or self.color_jitter > 0

    @property
    def controls(self):
        """The decoding controls of this run's captions (`generate.Controls`)."""
        from ..models.decoding import Controls

        return Controls(self.no_repeat_ngram_size, self.repetition_penalty)


def default_of(cls, key: str):
    """The default of setting `key` of a config class."""
    return cls.__pydantic_fields__[key].get_default(call_default_factory=True)


def _coerce(cls, key: str, value, text: bool, source: str = "setting"):
    """A setting's value as the type of its default. `text`: a --key=value string, read as that type;
    a TOML value must have the type already (a TOML string is no int), except an integer for a float."""
    kind = type(default_of(cls, key))
    if text and isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if kind is list:
                return [v.strip() for v in value.split(",") if v.strip()]
            return kind(float(value)) if kind is int and "e" in value.lower() else kind(value)
        except (ValueError, OverflowError) as e:
            raise HW3Error(f"{source}: {key}={value!r} is not a valid {kind.__name__}") from e
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not type(value) and not (kind is list and isinstance(value, list)):
        shown = "a string" if isinstance(value, str) else type(value).__name__
        raise HW3Error(f"{source}: {key} expects {_toml_type(kind)}, got {shown} ({value!r})")
    return value


def _toml_type(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}.get(
        kind, kind.__name__)


def _other_kinds(values: dict, where: dict) -> None:
    """Refuse [captioner] settings that the chosen PEFT kind does not read (they would be ignored)."""
    from ..models.captioner import PEFT_KINDS, kinds_of

    peft = values.get("peft", default_of(CaptionerConfig, "peft"))
    if peft not in PEFT_KINDS:
        return  # the kind itself is refused, with the kinds there are
    stray = [k for k in values if (kinds_of(k) or [peft]).count(peft) == 0]
    if stray:
        k = stray[0]
        raise HW3Error(f"{where[k]}: {', '.join(stray)} {'is a setting' if len(stray) == 1 else 'are settings'} of "
                       f"peft {' / '.join(kinds_of(k))}, not of peft = {peft!r} (remove "
                       f"{'it' if len(stray) == 1 else 'them'}; it would be ignored)")


def settings_table() -> list[tuple[str, str, str, object, str]]:
    """(table, key, type, default, description) for every [captioner] and [train] setting, from the
    config classes' field descriptions, so `hw3 train --help` cannot drift from the code."""
    rows = []
    for table, cls in (("captioner", CaptionerConfig), ("train", TrainConfig)):
        for name, info in cls.__pydantic_fields__.items():
            default = default_of(cls, name)
            rows.append((table, name, type(default).__name__, default, info.description or ""))
    return rows


def config_toml(cap: CaptionerConfig, tr: TrainConfig) -> str:
    """A resolved configuration as a TOML file that `load_config` reads back to the same values (the
    [captioner] settings that its PEFT kind reads; the others keep their defaults)."""
    from ..models.captioner import kinds_of

    out = []
    for table, cfg in (("captioner", cap), ("train", tr)):
        out.append(f"[{table}]")
        out += [f"{f.name} = {json.dumps(getattr(cfg, f.name))}" for f in fields(cfg)
                if cfg is tr or cap.peft in (kinds_of(f.name) or [cap.peft])]
        out.append("")
    return "\n".join(out)


def load_config(path: str | os.PathLike | None, overrides: dict[str, str] | None = None,
                ) -> tuple[CaptionerConfig, TrainConfig]:
    """Read a TOML config ([captioner] + [train]) and apply `key=value` overrides; unknown keys,
    wrong types and out-of-range values are errors naming the key."""
    raw = _read_toml(Path(path)) if path is not None else {}
    unknown_tables = set(raw) - {"captioner", "train"}
    if unknown_tables:
        raise HW3Error(f"{path}: unknown table(s) {', '.join(sorted(unknown_tables))} (use [captioner] and [train])")
    for table in ("captioner", "train"):
        if not isinstance(raw.get(table, {}), dict):
            raise HW3Error(f"{path}: [{table}] must be a table of settings, got {type(raw[table]).__name__}")
    values = {"captioner": dict(raw.get("captioner", {})), "train": dict(raw.get("train", {}))}
    names = {"captioner": {f.name for f in fields(CaptionerConfig)}, "train": {f.name for f in fields(TrainConfig)}}
    for table in values:
        unknown = set(values[table]) - names[table]
        if unknown:
            raise HW3Error(f"{path}: unknown key(s) in [{table}]: {', '.join(sorted(unknown))}")
    where = {k: f"{path} [{t}]" for t in values for k in values[t]}
    for key, value in (overrides or {}).items():
        table = next((t for t in names if key in names[t]), None)
        if table is None:
            raise HW3Error(f"unknown setting --{key} (not a [captioner] or [train] key)")
        values[table][key] = value
        where[key] = f"--{key}"
    _other_kinds(values["captioner"], where)
    given = set(overrides or {})
    cap = {k: _coerce(CaptionerConfig, k, v, k in given, where[k]) for k, v in values["captioner"].items()}
    tr = {k: _coerce(TrainConfig, k, v, k in given, where[k]) for k, v in values["train"].items()}
    try:
        captioner = CaptionerConfig(**cap)
    except ValidationError as e:
        raise invalid(e, f"{path}: invalid captioner setting" if path else "invalid captioner setting") from e
    try:
        return captioner, TrainConfig(**tr)
    except ValidationError as e:
        raise invalid(e, f"{path}: invalid training setting" if path else "invalid training setting") from e


def _read_toml(path: Path) -> dict:
    """A TOML file's tables; every failure one HW3Error naming the file (a byte-order mark by name)."""
    import tomllib

    if not path.is_file():
        raise HW3Error(f"{path}: config file not found")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        raise HW3Error(f"{path}: starts with a UTF-8 byte-order mark (BOM), which TOML does not allow; save the "
                       "file as UTF-8 without BOM")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HW3Error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise HW3Error(f"{path}: invalid TOML ({e})") from e
    except RecursionError as e:
        raise HW3Error(f"{path}: TOML nested too deeply to read") from e
