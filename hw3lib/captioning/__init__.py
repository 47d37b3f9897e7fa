"""P2: the PEFT captioning study. `runs` trains (or reuses) and loads one run and captions images with it;
`scoring` scores a set of captions (the course evaluator, the demo world's objects, intervals); `study`
compares every variant, recipe and decoding control on the same images.

Names load on first use (`core.lazy`).
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "COUNT_AWARE_ROW": "study",
    "Captioning": "runs",
    "Comparison": "study",
    "ComparisonSpec": "study",
    "DECODING_GRID": "study",
    "Extremes": "scoring",
    "Recipe": "study",
    "SHOWN_ROW": "study",
    "Scores": "scoring",
    "TrainJob": "runs",
    "Trained": "runs",
    "TrainingCurves": "runs",
    "caption_folder": "runs",
    "caption_objects": "runs",
    "caption_order_world": "study",
    "clipscore_extremes": "scoring",
    "compare_variants": "study",
    "default_tokenizer": "scoring",
    "evaluate_predictions": "scoring",
    "load_run": "runs",
    "manifest_for": "runs",
    "plan_memory": "runs",
    "probe_encoder": "scoring",
    "run_log": "runs",
    "score_predictions": "scoring",
    "slug": "runs",
    "store_all": "runs",
    "train_and_caption": "runs",
    "train_jobs": "runs",
    "train_run": "runs",
    "training_curves": "runs",
    "validation_curve": "runs",
    "with_intervals": "scoring",
    "write_val_predictions": "runs",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
