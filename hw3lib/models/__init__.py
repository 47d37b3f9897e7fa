"""GPT-2 with cross-attention and the course file format, the captioner and its PEFT kinds, decoding and its
fast paths, the memory plan, CLIP, and the loaders of what a manifest names.

Names load on first use (`core.lazy`): importing one module of the package never imports the rest.
"""

from ..core.lazy import lazy_exports

_EXPORTS = {  # name -> module
    "Captioner": "captioner",
    "CaptionerConfig": "captioner",
    "Controls": "decoding",
    "Decoding": "decoding",
    "GPT2": "gpt2",
    "GPT2Config": "gpt2",
    "GREEDY": "decoding",
    "OFF": "decoding",
    "beam_search": "decoding",
    "build_captioner": "captioner",
    "caption_images": "decoding",
    "encoder_transform": "loading",
    "greedy": "decoding",
    "load_clip": "loading",
    "load_decoder": "decoder_file",
    "load_tokenizer": "loading",
    "save_decoder": "decoder_file",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
