"""P3: attention maps (raw, rollout, relevance), capture, localisation, and the explorer / HTML viewer.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "AttentionExplorer": "viewer",
    "CaptionAttention": "maps",
    "METHODS": "maps",
    "capture": "maps",
    "display_maps": "maps",
    "html_viewer": "viewer",
    "save_viewer": "viewer",
    "localisation": "maps",
    "method_maps": "maps",
    "show_attention": "viewer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
