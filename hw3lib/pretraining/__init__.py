"""The demo world's models, pretrained in-project in the real file formats (`hw3 demo-models`): a tiny BPE,
the demo CLIP on styled images, its image tower as a timm ViT, GPT-2, and the negation-aware CLIP.
"""

from .demo_models import CLIP_NAME, NEGATION_MANIFEST, UNSTYLED_MANIFEST, DemoModelSettings, build_demo_models
from .negation_tuning import finetune_negation

__all__ = [
    "CLIP_NAME", "DemoModelSettings", "NEGATION_MANIFEST", "UNSTYLED_MANIFEST", "build_demo_models",
    "finetune_negation",
]
