"""A training run's folder (`hw3 train --out RUN_DIR`) and every file in it:

  config.json                    the full configuration of the run (+ parameter counts, world size)
  log.jsonl                      one line per logged step / validation
  checkpoint-best.safetensors    trainable tensors + model config (what `hw3 caption` loads)
  checkpoint-last.safetensors    the same, at the last save
  resume.pt                      everything needed to continue bit-exactly (weights_only loadable)
  summary.json                   written once, when the run has finished
  timing.jsonl                   wall-clock seconds at each logged step and at the end: the machine's, not
                                 the run's (every other file is the same bytes for the same settings)

Only the writer (rank 0 under DDP) touches files; on other ranks every write is a no-op. Every file is
written atomically, so a kill at any moment leaves each one whole (old or new).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Required  # pydantic needs these on Python 3.11

import torch
from pydantic import ConfigDict, NonNegativeInt, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from ..core.errors import HW3Error, first_line, invalid
from ..core.files import atomic_path, atomic_write_json, remove_stale_temporaries
from ..models.captioner import save_checkpoint

RUN_FILES = ("config.json", "log.jsonl", "checkpoint-best.safetensors", "checkpoint-last.safetensors", "resume.pt",
             "summary.json", "val_predictions.json", "timing.jsonl", ".lock")  # what a run folder holds


def config_key(model, cfg) -> str:
    """The run's identity: captioner and training configuration as canonical JSON. A resume state
    from another configuration is refused."""
    return json.dumps({"captioner": asdict(model.config), "train": asdict(cfg)}, sort_keys=True)


def same_settings(stored, cfg) -> bool:
    """Is a stored table of settings (config.json, a resume state) the configuration `cfg`? A setting newer
    than the run (absent from the stored table) counts as its default, which is what the run trained with."""
    if not isinstance(stored, dict):
        return False
    return {**asdict(type(cfg)()), **stored} == asdict(cfg)


def config_changes(recorded: str | None, captioner, train, shown: int = 6) -> str | None:
    """What differs between the configuration a resume state recorded (`config_key`) and `captioner` /
    `train` now: each setting "name old -> new" (section.name where the two sections share a name), a
    setting newer than the run reading as its default (`same_settings`); None when nothing does."""
    try:
        old = json.loads(recorded) if isinstance(recorded, str) else None
    except json.JSONDecodeError:
        old = None
    if not isinstance(old, dict) or not all(isinstance(old.get(k), dict) for k in ("captioner", "train")):
        return "the resume state records no readable configuration"
    now = {"captioner": captioner, "train": train}
    if all(same_settings(old[k], cfg) for k, cfg in now.items()):
        return None
    new = json.loads(json.dumps({k: asdict(cfg) for k, cfg in now.items()}))
    old = {k: {**asdict(type(cfg)()), **old[k]} for k, cfg in now.items()}
    flat_old, flat_new = _flatten(old), _flatten(new)
    diffs = [f"{k} {json.dumps(flat_old[k])} -> {json.dumps(flat_new[k])}" for k in sorted(flat_new)
             if flat_old.get(k) != flat_new[k]]
    more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return "changed: " + "; ".join(diffs[:shown]) + more


def _flatten(config: dict) -> dict:
    """{"captioner": {...}, "train": {...}} -> {name: value}, a name kept with its section where both have it."""
    sections = {k: v for k, v in config.items() if isinstance(v, dict)}
    names = [n for v in sections.values() for n in v]
    return {(n if names.count(n) == 1 else f"{sec}.{n}"): val for sec, v in sections.items() for n, val in v.items()}


ENCODER_DIGEST = "encoder.sha256"  # the encoder weights' content, among a run's inputs and in its checkpoints


def input_fingerprint(manifest, p2_dir) -> dict[str, str]:
    """What the run reads, by name: the caption files' and tokenizer files' sha256, the weights files'
    resolved path, size and modification time (hashing gigabytes on every resume would cost minutes),
    the encoder weights' sha256 (a caption encoder is small beside the decoder), and hub tags. A resume
    over a changed input is refused (`changed_inputs`)."""
    from ..core.files import require_file
    from .feature_cache import file_digest, weights_digest

    p2_dir = Path(p2_dir)
    out = {name: file_digest(require_file(p2_dir / name, "caption file")) for name in ("train.json", "val.json")}
    if (p2_dir / "boxes.json").is_file():  # the objects behind the captions (attention supervision, curves)
        out["boxes.json"] = file_digest(p2_dir / "boxes.json")
    out |= {f"tokenizer.{k}": file_digest(getattr(manifest.tokenizer, k)) for k in ("encoder_json", "vocab_bpe")}
    for label, path in (("decoder.weights", manifest.decoder.weights), ("encoder.checkpoint", manifest.encoder.checkpoint)):
        if path is not None:
            st = os.stat(path)
            out[label] = f"{Path(path).resolve()} ({st.st_size} bytes, mtime {st.st_mtime_ns})"
    out["encoder"] = f"{manifest.encoder.model} {manifest.encoder.hub_tag or ''} {manifest.encoder.model_kwargs}".strip()
    if manifest.encoder.checkpoint is not None:  # by content too: every checkpoint records it (`load_run` checks)
        out[ENCODER_DIGEST] = weights_digest(manifest.encoder.checkpoint)
    return out


def changed_inputs(recorded: dict | None, now: dict) -> list[str]:
    """The names whose fingerprint differs (all of them when nothing was recorded)."""
    if not isinstance(recorded, dict):
        return ["(no record of the run's inputs)"]
    newer = {ENCODER_DIGEST} - set(recorded)  # recorded since: a run from before has none (its path, size, mtime do)
    return sorted(k for k in (set(recorded) | set(now)) - newer if recorded.get(k) != now.get(k))


@with_config(ConfigDict(strict=True))
class Counters(TypedDict, total=False):
    """Where the loop is: optimiser steps, epochs and micro-batches done (others, e.g. the best score, pass)."""
    step: Required[NonNegativeInt]
    epoch: Required[NonNegativeInt]
    micro: Required[NonNegativeInt]


@with_config(ConfigDict(strict=True, arbitrary_types_allowed=True))
class ResumeState(TypedDict):
    """resume.pt: everything needed to continue bit-exactly (a weights_only torch file)."""
    trainable: dict[str, torch.Tensor]  # the trainable tensors by name
    optimizer: dict  # the optimiser's state_dict
    torch_rng: torch.Tensor  # torch's CPU generator state
    state: Counters
    config: str  # the run's identity (`identity`): a resume under another configuration is refused
    inputs: dict  # the inputs' fingerprints (`input_fingerprints`)


_RESUME = TypeAdapter(ResumeState)


def check_resume(ck, source) -> dict:
    """A resume state must have every field with its type; the loop's counters are non-negative ints."""
    if not isinstance(ck, dict):
        raise HW3Error(f"{source}: not a resume state (a {type(ck).__name__}, not a dict); remove it to start over")
    try:
        _RESUME.validate_python(ck)
    except ValidationError as e:
        raise HW3Error(f"{invalid(e, str(source))}; remove the file to start over") from None
    return ck


class RunFolder:
    def __init__(self, root: str | os.PathLike, writer: bool = True):
        self.root = Path(root)
        self.writer = writer  # rank 0 writes; other ranks only read resume.pt
        self.log_path = self.root / "log.jsonl"
        self.resume_path = self.root / "resume.pt"

    def checkpoint(self, kind: str) -> Path:
        return self.root / f"checkpoint-{kind}.safetensors"

    def read_resume(self) -> dict | None:
        """The resume state, or None when there is none. weights_only: a file that would run code on
        loading is refused, never executed."""
        if not self.resume_path.is_file():
            return None
        try:
            ck = torch.load(self.resume_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise HW3Error(f"{self.resume_path}: not a readable resume state ({first_line(e)}); remove it to "
                           "start over") from e
        return check_resume(ck, self.resume_path)

    def clear(self) -> None:
        """Remove a previous run's files (`hw3 train --force-new`); the lock stays with its holder."""
        if self.writer:
            for name in RUN_FILES:
                if name != ".lock":
                    (self.root / name).unlink(missing_ok=True)

    def start(self, config: dict, resumed_step: int) -> None:
        """Create the folder, clear temporaries left by a killed write, record the configuration and
        drop log lines written after the state we resume from (they will be written again)."""
        if not self.writer:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root)
        atomic_write_json(self.root / "config.json", config)
        self._truncate_log(resumed_step)

    def log(self, entry: dict) -> None:
        if self.writer:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def timing(self, entry: dict) -> None:
        """One line of timing.jsonl: when (wall clock) the run reached a step."""
        if self.writer:
            with open(self.root / "timing.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def save_checkpoint(self, kind: str, model, meta: dict) -> None:
        if self.writer:
            save_checkpoint(self.checkpoint(kind), model, meta)

    def save_resume(self, state: dict) -> None:
        if self.writer:
            with atomic_path(self.resume_path) as tmp:
                with open(tmp, "wb") as f:  # a file object: the same state gives the same bytes (decoder_file)
                    torch.save(state, f)

    def finish(self, summary: dict) -> None:
        if self.writer:
            atomic_write_json(self.root / "summary.json", summary)

    def _truncate_log(self, step: int) -> None:
        if not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if entry.get("step", entry.get("validation", {}).get("step", 0)) <= step:
                keep.append(line)
        with atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
