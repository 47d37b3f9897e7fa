"""hw3lib: CLIP zero-shot prompt analysis, PEFT image captioning and attention visualisation (DLCV HW3).

The most used entry points are importable from the package; they load lazily, so `import hw3lib` stays
cheap (torch and friends load on first use).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_gpt2_tokenizer": "hw3lib.tokenizer",
    "load_decoder": "hw3lib.decoder",
    "load_manifest": "hw3lib.assets",
    "build_captioner": "hw3lib.captioner",
    "show_attention": "hw3lib.viewer",
    "html_viewer": "hw3lib.viewer",
    "AttentionExplorer": "hw3lib.viewer",
    "HW3Error": "hw3lib.files",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hw3lib' has no attribute {name!r}")
