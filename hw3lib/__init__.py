"""hw3lib: CLIP zero-shot prompt analysis, PEFT image captioning and attention visualisation (DLCV HW3).

The most used entry points are importable from the package. They load on first use, so `import hw3lib`
stays cheap (torch and friends load when a name is first touched); the `TYPE_CHECKING` imports below
are the same names for IDEs and type checkers, which do not run `__getattr__`.
"""

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_gpt2_tokenizer": "hw3lib.core.tokenizer",
    "load_decoder": "hw3lib.models.decoder_file",
    "load_manifest": "hw3lib.core.manifest",
    "build_captioner": "hw3lib.models.captioner",
    "show_attention": "hw3lib.attention.viewer",
    "html_viewer": "hw3lib.attention.viewer",
    "AttentionExplorer": "hw3lib.attention.viewer",
    "HW3Error": "hw3lib.core.errors",
}
__all__ = ["AttentionExplorer", "HW3Error", "build_captioner", "html_viewer", "load_decoder", "load_gpt2_tokenizer",
           "load_manifest", "show_attention"]  # = _EXPORTS (tests/test_project.py)

if TYPE_CHECKING:  # the names `__getattr__` serves, spelled out for static tools
    from .attention.viewer import AttentionExplorer, html_viewer, show_attention
    from .core.errors import HW3Error
    from .core.manifest import load_manifest
    from .core.tokenizer import load_gpt2_tokenizer
    from .models.captioner import build_captioner
    from .models.decoder_file import load_decoder


__getattr__, __dir__ = lazy_exports(__name__, {name: module.removeprefix("hw3lib.") for name, module in _EXPORTS.items()})
