"""What `hw3 demo-models` made, read once: its metrics.json as a typed record, and the manifests beside
it. `DemoModels.load(assets)` is None for real assets (or a manifest without demo metrics), so every
place that asks "are these the demo models?" asks this one object, as it asks `DemoWorld.load` of data.
"""

from __future__ import annotations

from dataclasses import dataclass as stdlib_dataclass
from dataclasses import field
from pathlib import Path

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from ..core.files import read_json
from ..core.results import JsonRecord
from .pretraining_text import PretrainingText

NEGATION_MANIFEST = "assets_negation.json"  # the negation-aware CLIP's manifest (a CLIP section only)
UNSTYLED_MANIFEST = "assets_unstyled.json"  # the CLIP before its style phase (the old design; a CLIP section only)
COUNTING_MANIFEST = "assets_counting.json"  # the count-aware CLIP, its image tower as the encoder, the same decoder


@dataclass(frozen=True)
class ZeroShotCheck(JsonRecord):
    """The demo CLIP's zero-shot shape and colour on single-object scenes."""
    n: int  # images
    template: str  # the prompt, as written
    shape_accuracy: float
    color_accuracy: float


@dataclass(frozen=True, config=ConfigDict(extra="allow"))
class DemoMetrics(JsonRecord):
    """metrics.json of the demo models (training curves ride along as extra fields)."""
    size: str  # the world's size ("small" / "full")
    seed: int
    clip_recall_at_1_val: float  # image-to-text recall@1 on val pairs
    clip_recall_chance: float
    decoder_perplexity_val: float
    decoder_vocab_size: int
    seconds: float  # time to build them
    clip_zero_shot: dict[str, ZeroShotCheck] = field(default_factory=dict)  # "probe" / "val_single_object"
    clip_text: dict | None = None  # what the CLIP read (`PretrainingText`'s JSON form)
    negation_clip_recall_at_1_val: float | None = None
    unstyled_clip_recall_at_1_val: float | None = None
    counting_clip_recall_at_1_val: float | None = None
    counting_clip_zero_shot: dict[str, ZeroShotCheck] = field(default_factory=dict)  # as clip_zero_shot


@stdlib_dataclass(frozen=True)
class DemoModels:
    """The demo models beside an asset manifest."""
    folder: Path  # where `hw3 demo-models` wrote them
    metrics: DemoMetrics

    @classmethod
    def load(cls, assets) -> DemoModels | None:
        """The demo models of manifest `assets`; None for "real" or a manifest without a metrics.json."""
        if assets is None or str(assets) == "real":
            return None
        metrics = Path(assets).parent / "metrics.json"
        if not metrics.is_file():
            return None
        return cls(metrics.parent, DemoMetrics.from_json(read_json(metrics), str(metrics)))

    def pretraining_text(self) -> PretrainingText | None:
        """The record of what the demo CLIP read (None for models built before it was kept)."""
        t = self.metrics.clip_text
        return None if t is None else PretrainingText.from_json(t, f"{self.folder / 'metrics.json'}: clip_text")

    def manifest(self, name: str) -> Path | None:
        """One of the extra manifests (NEGATION_MANIFEST, UNSTYLED_MANIFEST, COUNTING_MANIFEST), None where
        not built."""
        path = self.folder / name
        return path if path.is_file() else None
