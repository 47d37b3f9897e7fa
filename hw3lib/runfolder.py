"""A training run's folder (`hw3 train --out RUN_DIR`) and every file in it:

  config.json                    the full configuration of the run (+ parameter counts, world size)
  log.jsonl                      one line per logged step / validation
  checkpoint-best.safetensors    trainable tensors + model config (what `hw3 caption` loads)
  checkpoint-last.safetensors    the same, at the last save
  resume.pt                      everything needed to continue bit-exactly (weights_only loadable)
  summary.json                   written once, when the run has finished

Only the writer (rank 0 under DDP) touches files; on other ranks every write is a no-op. Every file is
written atomically, so a kill at any moment leaves each one whole (old or new).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from .captioner import save_checkpoint
from .files import HW3Error, atomic_path, atomic_write_json, first_line, remove_stale_temporaries


def config_key(model, cfg) -> str:
    """The run's identity: captioner and training configuration as canonical JSON. A resume state
    from another configuration is refused."""
    return json.dumps({"captioner": asdict(model.config), "train": asdict(cfg)}, sort_keys=True)


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
            return torch.load(self.resume_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise HW3Error(f"{self.resume_path}: not a readable resume state ({first_line(e)}); remove it to "
                           "start over") from e

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

    def save_checkpoint(self, kind: str, model, meta: dict) -> None:
        if self.writer:
            save_checkpoint(self.checkpoint(kind), model, meta)

    def save_resume(self, state: dict) -> None:
        if self.writer:
            with atomic_path(self.resume_path) as tmp:
                torch.save(state, tmp)

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
