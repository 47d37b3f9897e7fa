"""The fast decoding paths give the same tokens as the plain ones: preallocated KV cache, beams sharing
cross keys/values, pruning of finished rows, MKL-packed linears; ours equals transformers' generate.
Tiny random-weight captioners (built in milliseconds) with an end-token bias, so captions end at
different lengths and pruning really happens."""

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from hw3lib.models.captioner import PEFT_KINDS, Captioner, CaptionerConfig
from hw3lib.models.decoder_file import normalise_gpt2_state_dict
from hw3lib.models.decoding import Search, beam_search, greedy
from hw3lib.models.fastpath import fast_decoding, packed_linears, packed_linears_available
from hw3lib.models.gpt2 import GPT2, GPT2Config, KVCache, SelfAttention

EOT, MAX = 299, 20


def tiny_captioner(kind="lora", seed=0, end_bias=0.33):
    """GPT2Config.tiny + cross-attention, random trainable tensors, and `end_bias` added to the end
    token's logit (through ln_f's bias), which makes caption lengths vary from image to image."""
    torch.manual_seed(seed)
    dec = GPT2(GPT2Config.tiny(cross_attention=True))
    model = Captioner(None, dec, CaptionerConfig(peft=kind, lora_r=4, adapter_dim=8, virtual_tokens=3), encoder_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
        w = model.decoder.wte.weight[EOT]
        model.decoder.ln_f.bias.add_(end_bias * w / w.norm() ** 2)
    return model.eval()


def feats(B=8, seed=1):
    return torch.randn(B, 10, 16, generator=torch.Generator().manual_seed(seed))


def varied_captioner(kind):
    """The first end-token bias (of a few, fixed) with which greedy captions end at 3+ different lengths."""
    for bias in (0.33, 0.3, 0.36, 0.27, 0.4):
        model = tiny_captioner(kind, end_bias=bias)
        if len({len(t) for t in greedy(model, feats(), EOT, MAX).tokens}) >= 3:
            return model
    raise AssertionError(f"{kind}: no bias made caption lengths vary")


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_pruned_equals_unpruned(kind):
    model, f = varied_captioner(kind), feats()
    for capture in (False, True):
        g_pruned = greedy(model, f, EOT, MAX, search=Search(capture=capture, prune=True))
        g_full = greedy(model, f, EOT, MAX, search=Search(capture=capture, prune=False))
        b_pruned = beam_search(model, f, EOT, 3, MAX, search=Search(capture=capture, prune=True))
        b_full = beam_search(model, f, EOT, 3, MAX, search=Search(capture=capture, prune=False))
        assert g_pruned.tokens == g_full.tokens and g_pruned.finished == g_full.finished
        assert b_pruned.tokens == b_full.tokens and b_pruned.finished == b_full.finished
        assert b_pruned.scores == pytest.approx(b_full.scores, abs=1e-5)
        assert g_pruned.scores == pytest.approx(g_full.scores, abs=1e-5)
        if capture:
            for a, b in zip(g_pruned.attentions + b_pruned.attentions, g_full.attentions + b_full.attentions,
                            strict=True):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len({len(t) for t in b_full.tokens}) >= 2, "beam captions should end at different lengths"


@pytest.mark.parametrize("kind", ["none", "prefix"])
def test_cached_beam_equals_uncached_beam(kind):
    model, f = tiny_captioner(kind), feats(B=4, seed=3)
    a = beam_search(model, f, EOT, 3, MAX)
    b = beam_search(model, f, EOT, 3, MAX, search=Search(use_cache=False, prune=False))
    assert a.tokens == b.tokens
    assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_kv_cache_equals_concatenation():
    torch.manual_seed(0)
    att = SelfAttention(GPT2Config.tiny())
    x = torch.randn(3, 5, 32)
    cache, past = KVCache(capacity=8), None
    for t in range(5):
        y1, _ = att(x[:, t:t + 1], cache)
        y2, past = att(x[:, t:t + 1], past)
        assert torch.equal(y1, y2)
    assert cache.size == 5 and torch.equal(cache.k[:, :, :5], past[0])
    cache.select_rows(torch.tensor([2, 0]))
    assert torch.equal(cache.v[:, :, :5], past[1][[2, 0]])
    with pytest.raises(ValueError, match="KV cache full"):
        att(torch.randn(2, 4, 32), cache)


def test_grouped_cross_attention_equals_repeated_keys():
    """G rows per image attending to the image's keys once == each row with its own copy."""
    torch.manual_seed(0)
    blk = GPT2(GPT2Config.tiny(cross_attention=True)).h[0].crossattention
    enc, x = torch.randn(2, 7, 32), torch.randn(6, 4, 32)  # 2 images, 3 rows each, 4 tokens
    kv = blk.kv(enc)
    kv_rep = tuple(t.repeat_interleave(3, dim=0) for t in kv)
    for need in (False, True):
        y, a = blk(x, kv, need_weights=need)
        y_ref, a_ref = blk(x, kv_rep, need_weights=need)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
        if need:
            assert a.shape == (6, 2, 4, 7)
            torch.testing.assert_close(a, a_ref, atol=1e-6, rtol=0)


@pytest.mark.skipif(not packed_linears_available(), reason="this torch build has no MKL packed GEMM")
@pytest.mark.parametrize("kind", ["lora", "dora", "adapter"])
def test_packed_linears_are_bit_identical_and_restored(kind):
    from hw3lib.models.fastpath import PackedLinear

    model, f = tiny_captioner(kind), feats()
    ids = torch.randint(0, EOT, (8, 6))
    before = {n: m for n, m in model.named_modules()}
    with torch.no_grad():
        ref_logits = model(f, ids)
    ref = beam_search(model, f, EOT, 3, MAX)
    with packed_linears(model.decoder, 8):
        assert isinstance(model.decoder.lm_head, PackedLinear) and model.decoder.lm_head.weight is model.decoder.wte.weight
        assert not any(type(m) is nn.Linear for m in model.decoder.modules() if not isinstance(m, PackedLinear)
                       and not any(m is p.base_layer for p in model.decoder.modules() if isinstance(p, PackedLinear)))
        with torch.no_grad():
            assert torch.equal(model(f, ids), ref_logits)
        got = beam_search(model, f, EOT, 3, MAX)
    assert got.tokens == ref.tokens and got.scores == ref.scores
    after = {n: m for n, m in model.named_modules()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before), "the modules are swapped back"
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert torch.is_grad_enabled()


def test_int8_is_opt_in_and_restores_the_model():
    model, f = tiny_captioner("lora"), feats()
    decoder = model.decoder
    ref = greedy(model, f, EOT, MAX)
    with fast_decoding(model, "cpu", "int8"):
        assert model.decoder is not decoder
        assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in model.decoder.modules())
        out = greedy(model, f, EOT, MAX)
    assert model.decoder is decoder
    assert len(out.tokens) == 8 and greedy(model, f, EOT, MAX).tokens == ref.tokens
    with fast_decoding(model, "cpu"):  # the default is exact
        assert greedy(model, f, EOT, MAX).tokens == ref.tokens
    with pytest.raises(Exception, match="int4"):
        with fast_decoding(model, "cpu", "int4"):
            pass


def test_int8_merges_peft_deltas_exactly_before_quantising():
    from hw3lib.models.fastpath import merged_copy

    model = tiny_captioner("lora")
    merged = merged_copy(model.decoder)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x = torch.randint(0, EOT, (2, 5))
    enc = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, enc), model.decoder(x, enc), atol=1e-5, rtol=1e-5)
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith("c_attn"))


def transformers_twin(model):
    """transformers' GPT2LMHeadModel(add_cross_attention=True) holding the tiny captioner's decoder weights,
    and the projected encoder tokens it reads."""
    cfg = model.decoder.config
    hf = GPT2LMHeadModel(HFConfig(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                  n_layer=cfg.n_layer, n_head=cfg.n_head, add_cross_attention=True,
                                  attn_implementation="eager")).eval()
    sd = {k: v for k, v in normalise_gpt2_state_dict(hf.state_dict(), "hf").items()}
    ours = model.decoder.state_dict()
    conv = ("c_attn.weight", "q_attn.weight", "c_proj.weight", "c_fc.weight")
    hf_sd = {"transformer." + k: ours[k].t() if k.endswith(conv) else ours[k] for k in sd}
    hf.load_state_dict(hf_sd | {"lm_head.weight": ours["wte.weight"]}, strict=False)
    return hf


def generate_tokens(hf, enc, B, **kw) -> list[list[int]]:
    ids = torch.full((B, 1), EOT)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=enc, max_new_tokens=MAX,
                          do_sample=False, pad_token_id=EOT, eos_token_id=EOT, **kw)
    return [(row[1:].tolist() + [EOT])[: (row[1:].tolist() + [EOT]).index(EOT)] for row in out]


def cross_attention_captioner(end_bias=0.33):
    model = tiny_captioner("none", end_bias=end_bias)
    with torch.no_grad():
        for blk in model.decoder.h:  # cross-attention must matter (the captioner zero-inits it)
            blk.crossattention.c_proj.weight.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("forced", [False, True])
def test_greedy_equals_transformers_generate(forced):
    """Same weights in transformers' GPT2LMHeadModel(add_cross_attention=True): same tokens, whether
    captions end naturally (generate stops at the end token) or are forced to full length."""
    model, f = cross_attention_captioner(), feats()
    hf_tokens = generate_tokens(transformers_twin(model), model.proj(f), 8, num_beams=1,
                                **({"min_new_tokens": MAX} if forced else {}))
    ours_out = greedy(model, f, EOT, MAX, search=Search(min_len=MAX if forced else 0))
    assert ours_out.tokens == hf_tokens
    if not forced:
        assert len({len(t) for t in hf_tokens}) >= 3


@pytest.mark.parametrize(("ngram", "penalty"), [(2, 1.0), (3, 1.0), (0, 1.5), (0, 0.7), (2, 1.3)])
@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_controls_equal_transformers_generate(ngram, penalty, beams):
    """no_repeat_ngram_size and repetition_penalty: the same tokens as transformers' generate with the
    same settings on the same weights, greedy and beam search alike; and they do change the captions."""
    from hw3lib.models.decoding import Controls

    model, f = cross_attention_captioner(end_bias=0.2), feats()
    hf = transformers_twin(model)
    controls = Controls(no_repeat_ngram_size=ngram, repetition_penalty=penalty)
    kw = {"no_repeat_ngram_size": ngram, "repetition_penalty": penalty, "num_beams": beams}
    if beams > 1:
        kw |= {"early_stopping": False, "length_penalty": 1.0}
    want = generate_tokens(hf, model.proj(f), 8, **kw)
    got = beam_search(model, f, EOT, beams, MAX, controls=controls) if beams > 1 else greedy(model, f, EOT, MAX,
                                                                                              controls=controls)
    assert got.tokens == want
    plain = beam_search(model, f, EOT, beams, MAX) if beams > 1 else greedy(model, f, EOT, MAX)
    assert plain.tokens != got.tokens, "the control should change some caption of this batch"
    off = {k: v for k, v in kw.items() if k not in ("no_repeat_ngram_size", "repetition_penalty")}
    assert plain.tokens == generate_tokens(hf, model.proj(f), 8, **off)  # and without them, too
    if ngram:
        for toks in got.tokens:
            seq = [EOT] + toks
            grams = list(zip(*[seq[i:] for i in range(ngram)], strict=False))
            assert len(grams) == len(set(grams)), "an n-gram repeats"


