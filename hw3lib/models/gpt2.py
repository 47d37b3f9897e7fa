"""A compact GPT-2 decoder (nanoGPT style) with an optional cross-attention sub-layer.

Module names follow GPT-2 / transformers (`wte`, `wpe`, `h.{i}.ln_1`, `attn.c_attn`, `attn.c_proj`,
`ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`) and, for the optional cross-attention sub-layer, transformers'
`GPT2Block(add_cross_attention=True)` names (`ln_cross_attn`, `crossattention.q_attn / c_attn / c_proj`),
so weights move between this module and `GPT2LMHeadModel` by name. Linear layers are `nn.Linear`
(out, in); the course's file format is `decoder_file.py`.

The LM head has no bias and is tied to `wte`; the MLP uses GELU with the tanh approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .packing import Packing

# weights stored transposed (Conv1D layout) in the course file and in transformers' GPT-2
CONV1D_SUFFIXES = (".c_attn.weight", ".q_attn.weight", ".c_proj.weight", ".c_fc.weight")
# constant buffers that older GPT-2 checkpoints carry; they hold no learned values
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")


@dataclass
class GPT2Config:
    vocab_size: int = 50257  # tokens in the byte-level BPE vocabulary (<|endoftext|> is the last)
    block_size: int = 1024  # maximum sequence length (rows of wpe)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads (self- and cross-attention alike)
    n_embd: int = 768  # model width
    cross_attention: bool = False  # add a cross-attention sub-layer to every block (the captioner)
    coverage: bool = False  # cross-attention scores also see each encoder token's earlier attention (See et al.)
    layer_norm_epsilon: float = 1e-5  # GPT-2's LayerNorm epsilon

    @classmethod
    def small(cls, **kw) -> GPT2Config:
        """GPT-2 small: the shape of the course's decoder_model.bin."""
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> GPT2Config:
        """A test-sized decoder that builds in milliseconds."""
        return cls(**({"vocab_size": 300, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32} | kw))


class KVCache:
    """One layer's decoding state: self-attention keys and values, preallocated: (B, nh, capacity, hs)
    each; and, under coverage, the attention each encoder token has had so far (B, nh, S).

    `append` writes new keys/values in place and returns views of everything so far, so a decoding
    step costs no concatenation. Rows can be reordered (beam search) or dropped (finished captions).
    Storage is allocated on the first append, in the dtype and device of the keys (bf16 under autocast).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0  # positions filled
        self.k: torch.Tensor | None = None  # (B, nh, capacity, hs)
        self.v: torch.Tensor | None = None
        self.coverage: torch.Tensor | None = None  # (B, nh, S): cross-attention summed over positions so far

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, nh, T, hs = k.shape  # (B, nh, T, hs)
        if self.k is None:
            self.k = k.new_empty(B, nh, self.capacity, hs)
            self.v = v.new_empty(B, nh, self.capacity, hs)
        if self.size + T > self.capacity:
            raise ValueError(f"KV cache full: {self.size} + {T} positions > capacity {self.capacity}")
        self.k[:, :, self.size:self.size + T] = k
        self.v[:, :, self.size:self.size + T] = v
        self.size += T
        return self.k[:, :, :self.size], self.v[:, :, :self.size]  # (B, nh, size, hs)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index` (in that order): beam reordering or dropping finished rows."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
        if self.coverage is not None:
            self.coverage = self.coverage.index_select(0, index)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with an optional key/value cache and an optional prefix.

    The cache is a `KVCache` (filled in place) or a (keys, values) pair that is concatenated.
    A prefix is extra keys/values every query may attend to (prefix and prompt tuning). With a gate
    (one per head, zero-initialised, LLaMA-Adapter style) the prefix is attended separately and its
    output scaled by tanh(gate), so an untrained prefix leaves the model exactly as it was; without
    a gate the prefix joins the same softmax (Li & Liang's prefix tuning).
    """

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, past: KVCache | tuple[torch.Tensor, torch.Tensor] | None = None, prefix=None,
                packing: Packing | None = None):
        qkv = self.c_attn(x)  # (B, T, 3C), or (N, 3C) packed
        if packing is not None:
            if past is not None:
                raise ValueError("packed tokens are teacher-forced: there is no cache to extend")
            qkv = packing.unpack(qkv)  # (B, T, 3C), zeros at the padding
        B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if isinstance(past, KVCache):
            k, v = past.append(k, v)  # (B, nh, P+T, hs) views
            present = past
        else:
            if past is not None:
                k = torch.cat([past[0], k], dim=2)  # (B, nh, P+T, hs)
                v = torch.cat([past[1], v], dim=2)
            present = (k, v)
        P = k.size(2) - T
        gate = None
        if prefix is not None:
            pk, pv, gate = prefix  # (1 or B, nh, L, hs) x2, (nh,) or None
            pk, pv = pk.expand(B, -1, -1, -1), pv.expand(B, -1, -1, -1)
            if gate is None:  # one softmax over [prefix, cached, new]
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
                P += pk.size(2)
        if P == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)  # one new token sees every earlier one
        else:  # query i (absolute position P+i) sees keys 0..P+i
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if gate is not None:
            y = y + torch.tanh(gate).view(1, -1, 1, 1) * F.scaled_dot_product_attention(q, pk, pv)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        if packing is not None:
            y = packing.pack(y)  # (N, C)
        return self.c_proj(y), present


class CrossAttention(nn.Module):
    """Multi-head attention from text tokens to encoder tokens (already projected to n_embd).

    The text rows may outnumber the images by a whole factor G (beam search: G beams per image).
    Then the G rows of an image are attended as G*T queries against that image's keys/values, so the
    keys/values are stored and read once per image rather than once per beam. Each query's attention
    is independent of the others, so the result is the same as repeating the keys/values G times.
    """

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.q_attn = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_attn = nn.Linear(cfg.n_embd, 2 * cfg.n_embd)  # encoder tokens -> keys, values
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        # coverage (See et al. 2017, eq. 11): score_ti += w_h * c_ti, c_t = the attention token i had at
        # the caption's earlier positions; one weight per head, 0 at first (the model is unchanged)
        self.coverage = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.coverage else None

    def kv(self, enc):
        B, S, C = enc.shape  # (B, S, C) encoder tokens
        if type(self.c_attn) is nn.Linear:  # keys and values apart: no split of the output (its gradient is a cat)
            w, b = self.c_attn.weight, self.c_attn.bias
            k, v = F.linear(enc, w[:C], b[:C]), F.linear(enc, w[C:], b[C:])
        else:  # a wrapped layer (PEFT) is called whole
            k, v = self.c_attn(enc).split(C, dim=2)
        return tuple(t.view(B, S, self.n_head, C // self.n_head).transpose(1, 2) for t in (k, v))  # (B, nh, S, hs)

    def forward(self, x, kv, need_weights: bool = False, past: KVCache | None = None, packing: Packing | None = None):
        q = self.q_attn(x)  # (R, T, C): R = B images x G rows each; or (N, C) packed
        if packing is not None:
            q = packing.unpack(q)  # (R, T, C), zeros at the padding
        R, T, C = q.shape
        k, v = kv  # (B, nh, S, hs)
        B, nh, hs = k.size(0), self.n_head, C // self.n_head
        G = R // B
        q = q.view(B, G, T, nh, hs).permute(0, 3, 1, 2, 4).reshape(B, nh, G * T, hs)
        if need_weights or self.coverage is not None:  # explicit softmax so the maps can be returned
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, G*T, S)
            if self.coverage is not None:
                att = att + self.coverage.view(1, nh, 1, 1) * self._coverage(att.softmax(dim=-1), B, G, T, past)
            att = att.softmax(dim=-1)
            y = att @ v
            if G > 1:  # (R, nh, T, S); with G = 1 the very tensor y came from (gradient relevance needs it)
                att = att.view(B, nh, G, T, -1).transpose(1, 2).reshape(R, nh, T, -1)
        else:
            att = None
            y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, G*T, hs)
        y = y.view(B, nh, G, T, hs).permute(0, 2, 3, 1, 4).reshape(R, T, C)
        if packing is not None:
            y = packing.pack(y)  # (N, C)
        return self.c_proj(y), att

    @staticmethod
    def _coverage(raw: torch.Tensor, B: int, G: int, T: int, past: KVCache | None) -> torch.Tensor:
        """raw (B, nh, G*T, S): each position's attention before coverage -> the attention each encoder
        token had at the row's earlier positions (B, nh, G*T, S): earlier positions of this call, plus
        what `past` holds from earlier calls (updated in place: decoding one token at a time equals
        the whole caption at once). Coverage sums this raw attention, so every position's is known in
        one pass (See et al. sum the final attention, one position after another)."""
        nh, S = raw.shape[1], raw.shape[-1]
        raw = raw.view(B, nh, G, T, S)
        before = raw.cumsum(dim=3) - raw  # (B, nh, G, T, S)
        if past is not None:
            if not isinstance(past, KVCache):
                raise ValueError("coverage needs a KVCache to carry its state between decoding steps")
            if past.coverage is not None:  # (R, nh, S) -> (B, nh, G, 1, S)
                before = before + past.coverage.view(B, G, nh, S).permute(0, 2, 1, 3).unsqueeze(3)
            total = raw.sum(dim=3).permute(0, 2, 1, 3).reshape(B * G, nh, S)
            past.coverage = total if past.coverage is None else past.coverage + total
        return before.view(B, nh, G * T, S)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class CrossAttentionNorm(nn.LayerNorm):
    """The LayerNorm in front of the cross-attention sub-layer (its own type: it trains with it)."""


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = SelfAttention(cfg)
        if cfg.cross_attention:
            self.ln_cross_attn = CrossAttentionNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
            self.crossattention = CrossAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, cross_kv=None, past=None, need_weights=False, prefix=None, packing: Packing | None = None):
        """x (B, T, C), or (N, C) with `packing`: only the attention cores see the padded layout."""
        a, present = self.attn(self.ln_1(x), past, prefix, packing)
        x = x + a
        att = None
        if cross_kv is not None:
            c, att = self.crossattention(self.ln_cross_attn(x), cross_kv, need_weights, past, packing)
            x = x + c
        x = x + self.mlp(self.ln_2(x))
        return x, present, att


class GPT2(nn.Module):
    """GPT-2 language model; with `cfg.cross_attention` every block also attends to encoder tokens.

    The state dict keys are the course file's (`wte.weight`, `h.0.attn.c_attn.weight`, ...). The LM
    head `lm_head` is a real `nn.Linear` module whose weight *is* `wte.weight` (tied, as in nanoGPT and
    transformers), so fast paths can swap it like any linear layer; the state dict holds the tensor
    once, under `wte.weight`, and loading ties the head again.
    """

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # (B, T, C) -> (B, T, vocab); built on meta (no initialisation of its own), then tied
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False, device="meta")
        self.lm_head.weight = self.wte.weight
        self.register_state_dict_post_hook(_drop_tied_head)
        self.register_load_state_dict_pre_hook(_tied_head_from_wte)
        self.register_load_state_dict_post_hook(_tie_head)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def cross_kv(self, enc: torch.Tensor) -> list:
        """Per-layer cross-attention keys/values of encoder tokens (B, S, n_embd); computed once per image."""
        return [blk.crossattention.kv(enc) for blk in self.h]

    def embed(self, idx: torch.Tensor, pos_offset: int = 0) -> torch.Tensor:
        T = idx.size(1)
        if pos_offset + T > self.config.block_size:
            raise ValueError(f"sequence of {pos_offset + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(pos_offset, pos_offset + T, device=idx.device)
        return self.wte(idx) + self.wpe(pos)  # (B, T, C)

    def forward_hidden(self, x, cross_kv=None, past=None, need_weights=False, prefixes=None,
                       packing: Packing | None = None):
        """Run the blocks on embeddings x (B, T, C), or on the real tokens (N, C) of a padded batch with
        `packing` (then the hidden states are (N, C) too). Returns final hidden states, new per-layer
        self-attention caches, and per-layer cross-attention weights (None unless asked; (B, nh, T, S)).
        `prefixes` gives each layer extra (keys, values, gate) for prefix/prompt tuning."""
        presents, atts = [], []
        for i, blk in enumerate(self.h):
            x, present, att = blk(x, None if cross_kv is None else cross_kv[i],
                                  None if past is None else past[i], need_weights,
                                  None if prefixes is None else prefixes[i], packing)
            presents.append(present)
            atts.append(att)
        return self.ln_f(x), presents, atts

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # tied head, no bias: (B, T, vocab)

    def forward(self, idx: torch.Tensor, enc: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) [+ encoder tokens (B, S, n_embd)] -> logits (B, T, vocab)."""
        cross_kv = self.cross_kv(enc) if enc is not None else None
        hidden, _, _ = self.forward_hidden(self.embed(idx), cross_kv)
        return self.logits(hidden)


def _drop_tied_head(module, state_dict, prefix, local_metadata):
    """The head's weight is `wte.weight`: the state dict holds it once (as the course file does)."""
    state_dict.pop(prefix + "lm_head.weight", None)


def _tied_head_from_wte(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs):
    if prefix + "wte.weight" in state_dict:
        state_dict.setdefault(prefix + "lm_head.weight", state_dict[prefix + "wte.weight"])


def _tie_head(module, incompatible_keys):
    """Loading with assign=True makes new Parameter objects: the head shares `wte`'s again."""
    module.lm_head.weight = module.wte.weight


def is_cross_attention_key(key: str) -> bool:
    return ".crossattention." in key or ".ln_cross_attn." in key


def fresh_cross_attention(model: GPT2) -> dict[str, torch.Tensor]:
    """New cross-attention sub-layers for a decoder built by `empty_model`, initialised as GPT2 does
    (from torch's global generator); returns their tensors by state-dict key."""
    for blk in model.h:
        for m in (blk.ln_cross_attn, blk.crossattention):
            m.to_empty(device="cpu")
            m.apply(GPT2._init_weights)
        blk.ln_cross_attn.reset_parameters()
        nn.init.normal_(blk.crossattention.c_proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * model.config.n_layer))
        if blk.crossattention.coverage is not None:
            nn.init.zeros_(blk.crossattention.coverage)
    return {k: v for k, v in model.state_dict().items() if is_cross_attention_key(k)}
