"""Caption tokens without their padding, for teacher-forced training (`Packing`).

A teacher-forced batch is padded to its longest caption (`tokenizer.teacher_forcing_batch`), and every
layer used to run on the padding too. Most of the decoder works token by token: the layer norms, every
linear layer (with its PEFT wrapper: LoRA, DoRA, (IA)^3, adapters), the MLP and the LM head. Those run on
the real tokens only, packed into (N, C). The two attention cores mix positions, so they run on the
padded (B, T, ...) layout, zeros at the padding, and their output is packed again.

This changes no real token's value: a row's real tokens are a prefix of it (the padding follows the
caption), and attention is causal, so no real token attends to a padded one; the cross-attention of a
position reads only that position's query. The logits of the real tokens equal those of the padded
batch, as do the gradients (tests/test_packing.py). Decoding (one new token at a time, with a cache)
has no padding to drop and does not pack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded (B, T) batch sit, and how to move tensors between the layouts."""
    index: torch.Tensor  # (N,) long: the flat position b * T + t of each real token, row by row
    rows: int  # B
    length: int  # T

    @classmethod
    def of(cls, real: torch.Tensor) -> Packing:
        """From real (B, T) bool, True at the real tokens, which must be a prefix of each row."""
        if real.dim() != 2 or real.dtype != torch.bool:
            raise ValueError(f"real must be a (B, T) bool mask, got {tuple(real.shape)} {real.dtype}")
        if bool((real[:, 1:] & ~real[:, :-1]).any()):
            raise ValueError("a row's real tokens must come before its padding (causal attention needs it)")
        return cls(real.flatten().nonzero().squeeze(1), real.shape[0], real.shape[1])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (N, ...): the real tokens, row by row."""
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, T, ...), zeros at the padding."""
        out = x.new_zeros((self.rows * self.length, *x.shape[1:]))
        return out.index_copy(0, self.index, x).view(self.rows, self.length, *x.shape[1:])
