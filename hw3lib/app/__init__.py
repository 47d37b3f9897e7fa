"""The entry points and presentation: the `hw3` CLI, the report driver, the summary writer, the figures.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "anatomy_figure": "plots",
    "caption_examples_figure": "plots",
    "confusion_figure": "plots",
    "frequency_figure": "plots",
    "greedy_vs_beam_figure": "plots",
    "grounding_figure": "plots",
    "layer_head_figure": "plots",
    "learning_curves_figure": "plots",
    "localisation_figure": "plots",
    "counting_figure": "plots",
    "negation_experiment_figure": "plots",
    "negation_figure": "plots",
    "p1_section": "summary",
    "p2_section": "summary",
    "p3_section": "summary",
    "paired_differences_figure": "plots",
    "pareto_figure": "plots",
    "per_class_accuracy_figure": "plots",
    "pointing_by_shape_figure": "plots",
    "probe_figure": "plots",
    "prompt_table_figure": "plots",
    "save": "plots",
    "selection_figure": "plots",
    "style_figure": "plots",
    "token_maps_figure": "plots",
    "top_probabilities_figure": "plots",
    "training_curves_figure": "plots",
    "variants_figure": "plots",
    "write_summary": "summary",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
