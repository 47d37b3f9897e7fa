"""Losses on the captioner's cross-attention, beside the caption's cross-entropy.

Every term reads one map per caption position: the cross-attention averaged over layers and heads,
a (B, T, S) tensor whose rows sum to 1 over the S encoder tokens (`mean_map`).

  doubly_stochastic   Xu et al. 2015 ("Show, Attend and Tell", 4.2.1): sum_i (1 - sum_t a_ti)^2 per
                      caption - every region attended about once over the caption. Needs no boxes.
  coverage            See et al. 2017 (pointer-generator): sum_t sum_i min(a_ti, c_ti) with
                      c_t = sum_{t' < t} a_t' - attending again where the caption already looked. Needs
                      no boxes.
  supervision         Liu et al. 2017 (attention correctness): -log of the attention mass inside the
                      named object's box, at every position of a phrase naming it. Needs boxes.

Each is a mean per caption token (valid positions), so its weight is on the scale of the per-token
cross-entropy.
"""

from __future__ import annotations

import torch

from ..core.patches import points_at

EPS = 1e-6


def mean_map(atts: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer cross-attention [(B, nh, T, S), ...] -> (B, T, S), averaged over layers and heads."""
    return torch.stack([a.float().mean(dim=1) for a in atts]).mean(dim=0)


def doubly_stochastic(att: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """att (B, T, S), valid (B, T) bool -> sum over encoder tokens of (1 - attention they got over the
    caption)^2, per caption, divided by the caption's tokens; mean over captions."""
    total = (att * valid.unsqueeze(-1)).sum(dim=1)  # (B, S)
    per_caption = ((1.0 - total) ** 2).sum(dim=1)  # (B,)
    return (per_caption / valid.sum(dim=1).clamp(min=1)).mean()


def coverage(att: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """att (B, T, S), valid (B, T) bool -> mean over valid positions of sum_i min(a_ti, c_ti), c_t the
    attention of the caption's earlier valid positions."""
    a = att * valid.unsqueeze(-1)
    c = a.cumsum(dim=1) - a  # (B, T, S): attention before position t
    per_position = torch.minimum(a, c).sum(dim=-1)  # (B, T)
    return per_position[valid].sum() / valid.sum().clamp(min=1)


def supervision(att: torch.Tensor, where: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """att (B, T, S), where (B, T, S) bool (the named object's tokens), inside (B, T) bool (positions
    in a phrase) -> mean over those positions of -log(attention inside the box)."""
    if not inside.any():
        return att.sum() * 0.0
    mass = (att * where).sum(dim=-1)  # (B, T)
    return -torch.log(mass[inside] + EPS).mean()


def box_mass(att: torch.Tensor, where: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The attention mass inside the box at each position of `at` (B, T) bool -> (n,)."""
    return (att * where).sum(dim=-1)[at]


def points_inside(att: torch.Tensor, where: torch.Tensor, at: torch.Tensor, prefix: int) -> torch.Tensor:
    """The pointing game (`patches.points_at`, P3's too) at each position of `at` (B, T) bool: is the most
    attended patch one the object covers? att, where (B, T, S) over `prefix` + patch tokens -> (n,) bool."""
    return points_at(att[..., prefix:], where[..., prefix:])[at]
