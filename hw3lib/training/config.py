"""Run configuration: the [captioner] and [train] tables of a TOML file, `--key=value` overrides,
their types and ranges (checked before any work), and the settings list `hw3 train --help` shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from ..core.errors import HW3Error
from ..models.captioner import CaptionerConfig

INT_LIMITS = {"seed": 2**32 - 1, "max_trainable": 10**12, "max_caption_tokens": 65_536}  # others: 10**9


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over every (image, caption) pair
    batch_size: int = 8  # pairs per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 3e-5  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 0  # linear warm-up, in optimiser steps
    eta_min: float = 1e-6  # floor of the cosine annealing
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    amp: str = "auto"  # auto (bf16 from compute capability 8.0, fp16 + loss scaling below, fp32 on CPU) | off | bf16 | fp16
    hflip: float = 0.0  # horizontal-flip probability (augmentation)
    color_jitter: float = 0.0  # colour-jitter strength for brightness/contrast/saturation (0 = off)
    feature_cache: bool = True  # cache frozen encoder tokens on disk (only without augmentation)
    cache_dir: str = ""  # where the cache lives ("" = RUN_DIR/../feature-cache)
    max_caption_tokens: int = 60  # longest caption in tokens (+1 for the end token)
    max_trainable: int = 35_000_000  # refuse to train above this many trainable parameters
    val_every: int = 0  # optimiser steps between validations (0 = once per epoch)
    val_images: int = 100  # val images used for validation loss and metrics
    select_metric: str = "cider"  # best checkpoint by: cider | loss (cider needs a validator)
    no_repeat_ngram_size: int = 0  # validation and val_predictions captions: ban repeated n-grams (0 = off)
    repetition_penalty: float = 1.0  # validation and val_predictions captions: transformers' penalty (1 = off)
    max_steps: int = 0  # stop after this many optimiser steps (0 = run all epochs; negative is an error)
    seed: int = 0  # data order, initialisation of new modules
    log_every: int = 10  # optimiser steps between log lines
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        import math

        for f in fields(self):  # no inf / nan anywhere, and every count within a sane bound
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise HW3Error(f"invalid training setting: {f.name}={v!r} (not a finite number)")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_LIMITS.get(f.name, 10**9):
                raise HW3Error(f"invalid training setting: {f.name}={v} (at most {INT_LIMITS.get(f.name, 10**9):,})")
        checks = [("lr", self.lr > 0), ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("grad_accum", self.grad_accum >= 1), ("eta_min", 0 <= self.eta_min <= self.lr),
                  ("weight_decay", self.weight_decay >= 0), ("warmup_steps", self.warmup_steps >= 0),
                  ("grad_clip", self.grad_clip >= 0), ("hflip", 0 <= self.hflip <= 1),
                  ("color_jitter", self.color_jitter >= 0), ("max_caption_tokens", self.max_caption_tokens >= 2),
                  ("val_images", self.val_images >= 1), ("max_trainable", self.max_trainable >= 1),
                  ("max_steps", self.max_steps >= 0), ("log_every", self.log_every >= 1),
                  ("val_every", self.val_every >= 0), ("seed", self.seed >= 0),
                  ("amp", self.amp in ("auto", "off", "bf16", "fp16")),
                  ("select_metric", self.select_metric in ("cider", "loss"))]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise HW3Error("invalid training setting(s): " + ", ".join(f"{b}={getattr(self, b)!r}" for b in bad))
        self.controls  # noqa: B018 - the decoding controls check their own ranges

    @property
    def augment(self) -> bool:
        return self.hflip > 0 or self.color_jitter > 0

    @property
    def controls(self):
        """The decoding controls of this run's captions (`generate.Controls`)."""
        from ..models.decoding import Controls

        return Controls(self.no_repeat_ngram_size, self.repetition_penalty)


def _coerce(cls, key: str, value):
    f = next(f for f in fields(cls) if f.name == key)
    kind = type(f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
    if isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if kind is list:
                return [v.strip() for v in value.split(",") if v.strip()]
            return kind(float(value)) if kind is int and "e" in value.lower() else kind(value)
        except (ValueError, OverflowError) as e:
            raise HW3Error(f"setting {key}: {value!r} is not a valid {kind.__name__}") from e
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not type(value) and not (kind is list and isinstance(value, list)):
        raise HW3Error(f"setting {key}: expected {kind.__name__}, got {type(value).__name__} ({value!r})")
    return value


def settings_table() -> list[tuple[str, str, str, object, str]]:
    """(table, key, type, default, comment) for every [captioner] and [train] setting. The comments are
    read from the dataclasses' source, so `hw3 train --help` cannot drift from the code."""
    import inspect
    import re

    rows = []
    for table, cls in (("captioner", CaptionerConfig), ("train", TrainConfig)):
        comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), flags=re.M))
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((table, f.name, type(default).__name__, default, comments.get(f.name, "")))
    return rows


def config_toml(cap: CaptionerConfig, tr: TrainConfig) -> str:
    """A resolved configuration as a TOML file that `load_config` reads back to the same values."""
    out = []
    for table, cfg in (("captioner", cap), ("train", tr)):
        out.append(f"[{table}]")
        out += [f"{f.name} = {json.dumps(getattr(cfg, f.name))}" for f in fields(cfg)]
        out.append("")
    return "\n".join(out)


def load_config(path: str | os.PathLike | None, overrides: dict[str, str] | None = None,
                ) -> tuple[CaptionerConfig, TrainConfig]:
    """Read a TOML config ([captioner] + [train]) and apply `key=value` overrides; unknown keys,
    wrong types and out-of-range values are errors naming the key."""
    import tomllib

    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise HW3Error(f"{path}: config file not found")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise HW3Error(f"{path}: invalid TOML ({e})") from e
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
    for key, value in (overrides or {}).items():
        table = next((t for t in names if key in names[t]), None)
        if table is None:
            raise HW3Error(f"unknown setting --{key} (not a [captioner] or [train] key)")
        values[table][key] = value
    cap = {k: _coerce(CaptionerConfig, k, v) for k, v in values["captioner"].items()}
    tr = {k: _coerce(TrainConfig, k, v) for k, v in values["train"].items()}
    return CaptionerConfig(**cap), TrainConfig(**tr)
