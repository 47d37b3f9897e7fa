"""Unlikelihood training against re-naming an object already named (Welleck et al. 2019, "Neural Text
Generation with Unlikelihood Training", token-level).

Cross-entropy raises the probability of each reference token; it never lowers that of a token the model
should not write. The demo captioner's commonest failure after counting is a repeat ("a blue heart and a
blue heart"). At every position t, the candidates are the object nouns the caption has already named
before t, less the reference token at t (a scene may hold two circles: the second "circle" is never
pushed down where the reference writes it). The term is

    L_UL = - sum_t sum_{c in C_t} log(1 - p(c | y_<t)) / (number of candidates)

added to the cross-entropy with the weight `[train] unlikelihood`.
"""

from __future__ import annotations

import torch


def word_end_tokens(tokenizer, words) -> torch.Tensor:
    """(K,) long: for each word, the token that ends it when written after a space (" circle"), the
    position `phrasing.token_mentions` reads a noun at, whatever the tokenizer splits the word into."""
    return torch.tensor(sorted({tokenizer.encode(f" {w}")[-1] for w in words}), dtype=torch.long)


def repeat_candidates(targets: torch.Tensor, nouns: torch.Tensor) -> torch.Tensor:
    """(B, T, K) bool: noun k is a candidate at position t when an earlier reference token was noun k and
    the reference token at t is not. targets (B, T) long with -100 after the caption; nouns (K,)."""
    is_noun = targets[..., None] == nouns.to(targets.device)  # (B, T, K)
    seen = (is_noun.cumsum(dim=1) - is_noun.long()) > 0  # named strictly before t
    return seen & ~is_noun & (targets != -100)[..., None]


def unlikelihood(logits: torch.Tensor, targets: torch.Tensor, nouns: torch.Tensor) -> torch.Tensor:
    """The mean over candidates of -log(1 - p(candidate)); 0 (with a graph) where there is none.
    logits (B, T, V), targets (B, T), nouns (K,)."""
    cand = repeat_candidates(targets, nouns)  # (B, T, K)
    p = logits.float().softmax(dim=-1)[..., nouns.to(logits.device)]  # (B, T, K)
    term = -torch.log1p(-p.clamp(max=1 - 1e-6))
    return (term * cand).sum() / cand.sum().clamp(min=1)
