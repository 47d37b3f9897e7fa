"""The PEFT kinds: one function per kind wraps the decoder (`KINDS`), and the module types they add.

  none      nothing: the cross-attention (+ projection) alone - the baseline
  lora      LoRA of rank r on the named decoder modules (peft library)
  dora      weight-decomposed LoRA (peft, use_dora=True)
  ia3       (IA)^3 learned rescaling vectors (peft)
  adapter   bottleneck adapters after the named linear layers (the report's placement: after self- and
            cross-attention)
  prompt    k learned virtual tokens in front of the caption (their keys/values in every layer)
  prefix    k learned keys/values per layer (prefix tuning)

What trains is decided by these modules' types (`captioner.component_of`), never by parameter names.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import HW3Error, first_line
from .gpt2 import GPT2

PEFT_KINDS = ("none", "lora", "dora", "ia3", "adapter", "prompt", "prefix")


class Adapter(nn.Module):
    """Bottleneck adapter wrapping a `base_layer`: y = base(x); y + up(gelu(down(y))), up zero-init."""

    def __init__(self, base_layer: nn.Linear, dim: int):
        super().__init__()
        self.base_layer = base_layer
        width = base_layer.out_features
        self.adapter_down = nn.Linear(width, dim)
        self.adapter_up = nn.Linear(dim, width)
        nn.init.normal_(self.adapter_down.weight, std=0.02)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x):
        y = self.base_layer(x)
        return y + self.adapter_up(F.gelu(self.adapter_down(y)))


class PrefixTuning(nn.Module):
    """Learned keys and values for every layer: (n_layer, n_head, L, head_size) each."""

    def __init__(self, n_layer: int, n_head: int, head_size: int, length: int, gated: bool):
        super().__init__()
        self.prefix_keys = nn.Parameter(torch.randn(n_layer, n_head, length, head_size) * 0.5)
        self.prefix_values = nn.Parameter(torch.randn(n_layer, n_head, length, head_size) * 0.5)
        self.prefix_gate = nn.Parameter(torch.zeros(n_layer, n_head)) if gated else None

    def forward(self, decoder: GPT2):
        gates = self.prefix_gate if self.prefix_gate is not None else [None] * len(self.prefix_keys)
        return [(k[None], v[None], g) for k, v, g in zip(self.prefix_keys, self.prefix_values, gates, strict=True)]


class PromptTuning(nn.Module):
    """k learned input embeddings in front of the caption. They pass through the frozen decoder
    (attending to each other only; they carry no image), and the caption attends to their keys and
    values in every layer."""

    def __init__(self, decoder: GPT2, length: int, gated: bool):
        super().__init__()
        # initialised from the embeddings of real vocabulary tokens (Lester et al., 2021)
        ids = torch.randint(0, decoder.config.vocab_size, (length,), generator=torch.Generator().manual_seed(0))
        self.prompt_embeddings = nn.Parameter(decoder.wte.weight[ids].detach().clone())
        cfg = decoder.config
        self.prompt_gate = nn.Parameter(torch.zeros(cfg.n_layer, cfg.n_head)) if gated else None

    def forward(self, decoder: GPT2):
        _, presents, _ = decoder.forward_hidden(self.prompt_embeddings[None])  # per layer (1, nh, k, hs)
        gates = self.prompt_gate if self.prompt_gate is not None else [None] * len(presents)
        return [(k, v, g) for (k, v), g in zip(presents, gates, strict=True)]


class Tuned(NamedTuple):
    decoder: nn.Module  # the decoder with the kind's layers in place
    prompt: PromptTuning | None = None  # prompt tuning's virtual tokens
    prefix: PrefixTuning | None = None  # prefix tuning's keys/values


def target_regex(targets: list[str]) -> str:
    """Module-name pattern for blocks' sub-modules, e.g. h.3.attn.c_attn (never crossattention.*
    unless named)."""
    return r"h\.\d+\.(" + "|".join(re.escape(t) for t in targets) + ")"


def _peft_inject(peft_config, decoder: GPT2, setting: str, targets: list[str]) -> nn.Module:
    """peft's injection, with its "no module matched" error as one line naming the setting."""
    from peft import inject_adapter_in_model

    try:
        return inject_adapter_in_model(peft_config, decoder)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is a ValueError
        raise HW3Error(f"{setting}={','.join(targets)}: no decoder module matched ({first_line(e)}); modules are "
                       "named like attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, crossattention.c_attn") from e


def none(decoder: GPT2, cfg) -> Tuned:
    return Tuned(decoder)


def lora(decoder: GPT2, cfg, use_dora: bool = False) -> Tuned:
    from peft import LoraConfig

    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=target_regex(cfg.lora_targets), use_dora=use_dora, bias="none")
    return Tuned(_peft_inject(lc, decoder, "lora_targets", cfg.lora_targets))


def dora(decoder: GPT2, cfg) -> Tuned:
    return lora(decoder, cfg, use_dora=True)


def ia3(decoder: GPT2, cfg) -> Tuned:
    from peft import IA3Config

    ic = IA3Config(target_modules=target_regex(cfg.ia3_targets), feedforward_modules=target_regex(cfg.ia3_feedforward))
    return Tuned(_peft_inject(ic, decoder, "ia3_targets", cfg.ia3_targets))


def adapter(decoder: GPT2, cfg) -> Tuned:
    pattern = re.compile(target_regex(cfg.adapter_targets))
    for name, module in list(decoder.named_modules()):
        if pattern.fullmatch(name) and isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(decoder.get_submodule(parent), child, Adapter(module, cfg.adapter_dim))
    return Tuned(decoder)


def prompt(decoder: GPT2, cfg) -> Tuned:
    return Tuned(decoder, prompt=PromptTuning(decoder, cfg.virtual_tokens, cfg.prefix_gate))


def prefix(decoder: GPT2, cfg) -> Tuned:
    d = decoder.config
    return Tuned(decoder, prefix=PrefixTuning(d.n_layer, d.n_head, d.n_embd // d.n_head, cfg.virtual_tokens,
                                              cfg.prefix_gate))


KINDS = {"none": none, "lora": lora, "dora": dora, "ia3": ia3, "adapter": adapter, "prompt": prompt, "prefix": prefix}
assert tuple(KINDS) == PEFT_KINDS


@functools.cache
def layer_types() -> dict[str, tuple[type, ...]]:
    """Each PEFT component's module types (peft's are imported on first use): the parameters such a
    module holds itself, outside its `base_layer`, train."""
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.lora import LoraLayer

    return {"lora": (LoraLayer,), "ia3": (IA3Layer,), "adapter": (Adapter,), "prompt": (PromptTuning,),
            "prefix": (PrefixTuning,)}
