"""Caption metrics (CIDEr-D, CLIPScore, CHAIR), the demo world's object, relation and grounding metrics,
encoder probes, and the statistics behind every interval.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "ANATOMY": "objects",
    "Grounding": "grounding",
    "ObjectCounts": "objects",
    "RelationCounts": "relations",
    "bootstrap_ci": "stats",
    "chair": "chair",
    "cider": "captions",
    "clip_scores": "captions",
    "encoder_probes": "probe",
    "CaptionScores": "captions",
    "evaluate": "captions",
    "failure_kind": "objects",
    "grounding": "grounding",
    "object_counts": "objects",
    "paired_bootstrap": "stats",
    "relation_counts": "relations",
    "score_caption": "objects",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
