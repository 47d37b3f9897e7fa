"""Patch geometry, written once: an encoder's patch grid, which patches a box covers, and the pointing
game. Every user reads it from here: the object masks of attention supervision, the encoder probes'
patch labels, the demo CLIP's object pooling, P3's localisation and the training curves' pointing.

The rule for coverage: a patch is covered by a box when they overlap (a positive area in common). The
pointing game (Zhang et al. 2016) asks whether a map's most attended patch is one the named object
covers; it is scored on patches, so no upsampling or pixel tolerance enters it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels, x1 / y1 exclusive


@dataclass(frozen=True)
class PatchGrid:
    """How an encoder's tokens lie on its input image: `prefix` tokens (CLS, registers), then
    rows x cols patches in row-major order."""
    rows: int  # patches down the image
    cols: int  # patches across
    prefix: int = 1  # encoder tokens before the patches

    @classmethod
    def of_tokens(cls, n_tokens: int) -> PatchGrid:
        """A square grid behind a few prefix tokens, from the token count: 65 -> 8 x 8 + 1, 64 -> 8 x 8 + 0."""
        g = math.isqrt(n_tokens)
        return cls(g, g, n_tokens - g * g)

    @classmethod
    def of_encoder(cls, encoder) -> PatchGrid:
        """The grid of a timm ViT (its patch embedding's grid and its prefix tokens)."""
        rows, cols = (int(v) for v in encoder.patch_embed.grid_size)
        return cls(rows, cols, int(getattr(encoder, "num_prefix_tokens", 1)))

    @property
    def patches(self) -> int:
        return self.rows * self.cols

    @property
    def tokens(self) -> int:
        return self.prefix + self.patches

    def covered(self, box: Box, size: tuple[int, int]) -> np.ndarray:
        """(patches,) bool: the patches `box` overlaps, in an image of `size` = (height, width) pixels."""
        h, w = size
        x0, y0, x1, y1 = box
        ph, pw = h / self.rows, w / self.cols
        cols = (np.arange(self.cols) * pw < x1) & ((np.arange(self.cols) + 1) * pw > x0)
        rows = (np.arange(self.rows) * ph < y1) & ((np.arange(self.rows) + 1) * ph > y0)
        return np.outer(rows, cols).reshape(-1)

    def token_masks(self, boxes: list[Box], size: tuple[int, int]) -> torch.Tensor:
        """(len(boxes), tokens) bool: each box's covered patches as encoder-token positions (prefix never)."""
        out = torch.zeros(len(boxes), self.tokens, dtype=torch.bool)
        for k, b in enumerate(boxes):
            out[k, self.prefix:] = torch.from_numpy(self.covered(b, size))
        return out


def points_at(patch_maps: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """The pointing game: does each map's most attended patch lie on a covered patch?
    patch_maps (..., P) float over patches only; covered (..., P) or (P,) bool -> (...) bool."""
    top = patch_maps.argmax(dim=-1, keepdim=True)  # (..., 1)
    return covered.expand_as(patch_maps).gather(-1, top).squeeze(-1)
