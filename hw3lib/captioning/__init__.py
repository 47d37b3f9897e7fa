"""P2: the PEFT captioning study. `runs` trains (or reuses) and loads one run and captions images with it;
`scoring` scores a set of captions (the course evaluator, the demo world's objects, intervals); `study`
compares every variant, recipe and decoding control on the same images.
"""

from .runs import (
    TrainJob,
    caption_folder,
    caption_objects,
    load_run,
    manifest_for,
    plan_memory,
    run_log,
    slug,
    store_all,
    train_jobs,
    train_run,
    training_curves,
    validation_curve,
    write_val_predictions,
)
from .scoring import (
    Extremes,
    Scores,
    clipscore_extremes,
    default_tokenizer,
    evaluate_predictions,
    probe_encoder,
    score_predictions,
    with_intervals,
)
from .study import DECODING_GRID, Comparison, ComparisonSpec, Recipe, caption_order_world, compare_variants

__all__ = [
    "Comparison", "ComparisonSpec", "DECODING_GRID", "Extremes", "Recipe", "Scores", "TrainJob",
    "caption_folder", "caption_objects", "caption_order_world", "clipscore_extremes", "compare_variants",
    "default_tokenizer", "evaluate_predictions", "load_run", "manifest_for", "plan_memory",
    "probe_encoder", "run_log", "score_predictions", "slug", "store_all", "train_jobs", "train_run",
    "training_curves", "validation_curve", "with_intervals", "write_val_predictions",
]
