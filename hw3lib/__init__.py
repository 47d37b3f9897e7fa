"""hw3lib: CLIP zero-shot prompt analysis, PEFT image captioning and attention visualisation (DLCV HW3).

The most used entry points are importable from the package. They load on first use, so `import hw3lib`
stays cheap (torch and friends load when a name is first touched); the `TYPE_CHECKING` imports below
are the same names for IDEs and type checkers, which do not run `__getattr__`.
"""

from typing import TYPE_CHECKING

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
__all__ = ["AttentionExplorer", "HW3Error", "build_captioner", "html_viewer", "load_decoder", "load_gpt2_tokenizer",
           "load_manifest", "show_attention"]  # = _EXPORTS (tests/test_project.py)

if TYPE_CHECKING:  # the names `__getattr__` serves, spelled out for static tools
    from .assets import load_manifest
    from .captioner import build_captioner
    from .decoder import load_decoder
    from .files import HW3Error
    from .tokenizer import load_gpt2_tokenizer
    from .viewer import AttentionExplorer, html_viewer, show_attention


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hw3lib' has no attribute {name!r}")
