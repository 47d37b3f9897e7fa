"""The demo world's models, pretrained in-project in the real file formats (`hw3 demo-models`): a tiny BPE,
the demo CLIP on styled images, its image tower as a timm ViT, GPT-2, and the negation-aware CLIP.

Names load on first use (`core.lazy`).
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "CLIP_NAME": "demo_models",
    "DemoModelSettings": "demo_models",
    "build_demo_models": "demo_models",
    "finetune_negation": "negation_tuning",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
