"""P1: CLIP zero-shot classification, prompt templates, the prompt, frequency and style studies, negation.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "PHOTO": "templates",
    "REPORT": "templates",
    "ZeroShotStudy": "classify",
    "confusion_matrix": "classify",
    "count_zero_shot": "counting",
    "counting_contrastive": "counting",
    "ensemble": "classify",
    "frequency_study": "classify",
    "negation_benchmark": "negation",
    "negation_study": "classify",
    "per_class_accuracy": "classify",
    "prompt_study": "classify",
    "StylePrompts": "styles",
    "style_study": "styles",
    "template_set": "templates",
    "top_probabilities": "classify",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
