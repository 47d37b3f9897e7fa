"""Normalised CLIP features of images and texts, batched: one implementation for P1 (zero-shot),
the CLIPScore evaluator and the demo models' checks.

Text towers that are causal and pooled at the end token (open_clip's own) are run over the first L
positions only, L the longest text in the batch: exact, and ~5x less work for 10-token prompts in a
77-token context. CLIPScore keeps the full-context pass (`trim=False`), as the course evaluator does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..core.images import open_image
from ..core.progress import progress


@torch.no_grad()
def encode_images(clip, images, batch_size: int = 64, device="cpu", desc="encoding images") -> torch.Tensor:
    """(N, D) features of PIL images or image files, with the model's own preprocessing. Files are
    decoded one at a time and kept only as the model's input tensors, so memory grows with the batch,
    not with the number or the size of the images."""
    feats = []
    for i in progress(range(0, len(images), batch_size), desc=desc, leave=False, shown=len(images) > batch_size):
        x = torch.stack([clip.preprocess(im if isinstance(im, Image.Image) else open_image(Path(im)))
                         for im in images[i:i + batch_size]]).to(device)
        feats.append(clip.model.encode_image(x, normalize=True).float().cpu())
    return torch.cat(feats)


MAX_TEXT_CHARS = 1000  # CLIP reads at most 77 tokens; its BPE is quadratic in a word's length, so text is cut here


def clip_tokens(clip, texts: list[str]) -> torch.Tensor:
    """Tokenise for CLIP; texts longer than the context are truncated with one warning (and, first, cut to
    MAX_TEXT_CHARS characters, so that one enormous word costs no more than a long caption)."""
    texts = [t[:MAX_TEXT_CHARS] for t in texts]
    tokens = clip.tokenizer(texts)  # (N, context_length)
    # only a text that fills the context can have been cut (its last position is not padding): those are
    # encoded again to tell a cut text from one that fits exactly
    full = [t for t, row in zip(texts, tokens, strict=True) if int(row[-1]) != 0]
    try:
        long = [t for t in full if len(clip.tokenizer.encode(t)) + 2 > clip.context_length]
    except AttributeError:  # tokenizers without encode(): rely on their own truncation
        long = []
    if long:
        warnings.warn(f"{len(long)} text(s) exceed CLIP's {clip.context_length}-token context and were "
                      f"truncated (e.g. {long[0][:60]!r})", stacklevel=3)
    return tokens


def _trimmable(model) -> bool:
    """open_clip's built-in text tower (causal mask, pooled at the end token = the highest id)."""
    return (getattr(model, "attn_mask", None) is not None and hasattr(model, "positional_embedding")
            and getattr(model, "text_pool_type", None) == "argmax" and hasattr(model, "token_embedding"))


@torch.no_grad()
def clamp_logit_scale(model) -> None:
    """CLIP's rule in training: the learned logit scale exp(s) stays within [1, 100]."""
    model.logit_scale.clamp_(0, math.log(100))


def encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens, normalize=True)`, computed over the first L positions only, where L
    is the longest text in the batch. Exact for causal text towers pooled at the end token: no
    position before the end token attends past it. Other towers fall back to encode_text."""
    if not _trimmable(model):
        return model.encode_text(tokens, normalize=True)
    L = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :L]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:L].to(cast)  # (B, L, C)
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # (B, C) at the end token
    x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def encode_texts(clip, texts: list[str], batch_size: int = 256, device="cpu", trim: bool = True) -> torch.Tensor:
    """(N, D) text features; `trim` runs the tower over the used positions only (exact, faster)."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = clip_tokens(clip, texts[i:i + batch_size]).to(device)
        f = encode_text_trimmed(clip.model, tokens) if trim else clip.model.encode_text(tokens, normalize=True)
        out.append(f.float().cpu())
    return torch.cat(out)


@dataclass
class FrozenClipFeatures:
    """A CLIP (`ClipBundle`) that remembers the features of the image lists and text lists it encoded, by
    their paths and texts: scoring many caption sets of one split against its references (P2's rows)
    encodes the split's images and references once. For a CLIP whose weights stay as they are while it is
    used (nothing watches them), and image files that stay as they are."""
    clip: object  # ClipBundle
    _images: dict = field(default_factory=dict, repr=False)  # (paths, batch size, device) -> (N, D)
    _texts: dict = field(default_factory=dict, repr=False)  # (texts, trim, device) -> (N, D)

    def images(self, paths, batch_size: int = 64, device="cpu", desc="encoding images") -> torch.Tensor:
        """`encode_images` of image files, once per list of paths."""
        key = (tuple(str(p) for p in paths), batch_size, str(device))
        if key not in self._images:
            self._images[key] = encode_images(self.clip, paths, batch_size, device, desc=desc)
        return self._images[key]

    def texts(self, texts: list[str], device="cpu", trim: bool = True) -> torch.Tensor:
        """`encode_texts`, once per list of texts."""
        key = (tuple(texts), trim, str(device))
        if key not in self._texts:
            self._texts[key] = encode_texts(self.clip, texts, device=device, trim=trim)
        return self._texts[key]
