"""Patch geometry, written once: an encoder's patch grid, which patches a box covers, and the pointing
game. Every user reads it from here: the object masks of attention supervision, the encoder probes'
patch labels, the demo CLIP's object pooling, P3's localisation and the training curves' pointing.

The rule for coverage: a patch is covered by a box when the patch's centre lies inside the box (a box
that holds no patch centre covers the patch its own centre lies in, so every object covers at least one
patch). The pointing game (Zhang et al. 2016) asks whether a map's most attended patch is one the named
object covers; it is scored on patches, so no upsampling or pixel tolerance enters it.
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

    def position_code(self, dim: int) -> torch.Tensor:
        """(tokens, dim) fixed 2-D sine-cosine code of each token's place in the grid (DETR's and MAE's): the
        first half of the channels encodes the row, the second the column, each as sines and cosines of
        geometrically spaced frequencies; the prefix tokens, which lie nowhere, get zeros."""
        if dim % 4:
            raise ValueError(f"a 2-D sine-cosine code needs a width divisible by 4, not {dim}")
        quarter = dim // 4
        freq = 10_000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
        rows = torch.arange(self.rows, dtype=torch.float64).repeat_interleave(self.cols)  # (P,) row-major
        cols = torch.arange(self.cols, dtype=torch.float64).repeat(self.rows)
        code = torch.cat([f(pos[:, None] * freq) for pos in (rows, cols) for f in (torch.sin, torch.cos)], dim=1)
        return torch.cat([torch.zeros(self.prefix, dim, dtype=torch.float64), code]).float()  # (S, dim)

    def covered(self, box: Box, size: tuple[int, int]) -> np.ndarray:
        """(patches,) bool: the patches whose centre lies in `box`, in an image of `size` = (height, width)
        pixels; where there is none, the patch that holds the box's own centre."""
        h, w = size
        x0, y0, x1, y1 = box
        ph, pw = h / self.rows, w / self.cols
        cx, cy = (np.arange(self.cols) + 0.5) * pw, (np.arange(self.rows) + 0.5) * ph  # patch centres
        out = np.outer((cy >= y0) & (cy < y1), (cx >= x0) & (cx < x1))
        if not out.any():
            r = min(self.rows - 1, max(0, int((y0 + y1) / 2 // ph)))
            c = min(self.cols - 1, max(0, int((x0 + x1) / 2 // pw)))
            out[r, c] = True
        return out.reshape(-1)

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
