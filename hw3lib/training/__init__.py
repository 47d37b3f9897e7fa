"""Training a captioner: configuration, the loop (resume, DDP, validation), attention losses and
targets, the held-out selection split, the feature cache, the run folder.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "FeatureCache": "feature_cache",
    "RunFolder": "runfolder",
    "TrainConfig": "config",
    "HeldOut": "loop",
    "Trainer": "loop",
    "fit": "loop",
    "load_config": "config",
    "selection_split": "selection",
    "selection_validator": "selection",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
