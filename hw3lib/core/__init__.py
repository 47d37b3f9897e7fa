"""The ground floor: errors, files, images, data readers, the manifest, weights, the tokenizer, device and
precision, patch geometry, progress, and the results as typed records.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from .lazy import lazy_exports

_EXPORTS = {  # name -> module
    "CaptionSet": "data",
    "CurvePoint": "results",
    "Extreme": "results",
    "HW3Error": "errors",
    "Interval": "results",
    "JsonRecord": "results",
    "Localisation": "results",
    "Manifest": "manifest",
    "P1Summary": "results",
    "P3Summary": "results",
    "PatchGrid": "patches",
    "RunSummary": "results",
    "Share": "results",
    "Validation": "results",
    "VariantRow": "results",
    "VariantTable": "results",
    "check_images": "images",
    "list_images": "images",
    "load_gpt2_tokenizer": "tokenizer",
    "load_manifest": "manifest",
    "open_image": "images",
    "points_at": "patches",
    "read_caption_file": "data",
    "read_predictions": "data",
    "resolve_device": "device",
    "train_bpe": "tokenizer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
