"""The demo world: scenes, boxes and captions (with their grammar, `phrasing`), the demo CLIP's pretraining
text, and the record of the demo models (`DemoModels.load`; None for real assets).

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "DemoMetrics": "models_record",
    "DemoModels": "models_record",
    "DemoWorld": "world",
    "GRAMMAR": "phrasing",
    "COUNTING_MANIFEST": "models_record",
    "NEGATION_MANIFEST": "models_record",
    "Obj": "world",
    "PretrainingText": "pretraining_text",
    "UNSTYLED_MANIFEST": "models_record",
    "boxes_for": "world",
    "draw_scene": "world",
    "make_captions": "world",
    "mentions": "phrasing",
    "phrases": "phrasing",
    "stated_relations": "phrasing",
    "write_demo_world": "world",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
