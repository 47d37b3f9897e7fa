"""Decoding equivalences for every PEFT kind, beam search, and attention capture (tiny random models)."""

import pytest
import torch

from hw3lib.models.captioner import PEFT_KINDS
from hw3lib.models.decoding import Search, beam_search, greedy, sequence_logprob, teacher_forced_argmax
from tests import tiny

MAX = 14


def perturbed(kind, seed=0):
    """A tiny captioner whose trainable tensors are random (so the image matters and PEFT is active)."""
    return tiny.perturbed(tiny.tiny_captioner(kind, seed=seed), seed=seed)


def feats_for(model, B=3, seed=1):
    return tiny.encoder_tokens(B, 10, seed)


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_greedy_cache_equals_no_cache_equals_teacher_forced(kind):
    for seed in range(5):  # the first random model whose captions are more than an end token or two
        model = perturbed(kind, seed)
        eot, feats = model.decoder.config.vocab_size - 1, feats_for(model)
        if any(len(t) > 2 for t in greedy(model, feats, eot, MAX).tokens):
            break
    cached = greedy(model, feats, eot, MAX, search=Search(use_cache=True))
    plain = greedy(model, feats, eot, MAX, search=Search(use_cache=False))
    assert cached.tokens == plain.tokens == teacher_forced_argmax(model, feats, eot, MAX)
    assert any(len(t) > 2 for t in cached.tokens)


@pytest.mark.parametrize("kind", ["lora", "prefix", "prompt"])
def test_beam_cache_equals_no_cache_and_scores_are_true_logprobs(kind):
    model = perturbed(kind)
    eot = model.decoder.config.vocab_size - 1
    feats = feats_for(model)
    a = beam_search(model, feats, eot, beams=3, max_len=MAX, search=Search(use_cache=True))
    b = beam_search(model, feats, eot, beams=3, max_len=MAX, search=Search(use_cache=False))
    assert a.tokens == b.tokens
    for i, (toks, fin, score) in enumerate(zip(a.tokens, a.finished, a.scores, strict=True)):
        lp = sequence_logprob(model, feats[i:i + 1], toks, eot, with_end=fin)
        n = len(toks) + (1 if fin else 0)
        assert score == pytest.approx(lp / n, abs=1e-4)


def test_beam_finds_at_least_greedys_score():
    model = perturbed("lora", seed=3)
    eot = model.decoder.config.vocab_size - 1
    feats = feats_for(model, B=4, seed=5)
    g = greedy(model, feats, eot, MAX)
    b = beam_search(model, feats, eot, beams=4, max_len=MAX, length_penalty=0.0)
    for i in range(4):
        if g.finished[i] and b.finished[i]:
            assert b.scores[i] >= sequence_logprob(model, feats[i:i + 1], g.tokens[i], eot) - 1e-4


def test_beam_one_is_greedy():
    model = perturbed("none")
    eot = model.decoder.config.vocab_size - 1
    feats = feats_for(model)
    assert beam_search(model, feats, eot, beams=1, max_len=MAX).tokens == greedy(model, feats, eot, MAX).tokens


def test_capture_changes_nothing_and_gives_distributions():
    model = perturbed("lora")
    eot = model.decoder.config.vocab_size - 1
    feats = feats_for(model)
    off = greedy(model, feats, eot, MAX)
    on = greedy(model, feats, eot, MAX, search=Search(capture=True))
    assert on.tokens == off.tokens
    L, H = model.decoder.config.n_layer, model.decoder.config.n_head
    for toks, fin, att in zip(on.tokens, on.finished, on.attentions, strict=True):
        assert att.shape == (len(toks) + (1 if fin else 0), L, H, 10)
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), atol=1e-5, rtol=0)
    # the captured maps are the teacher-forced forward's cross-attention for the same tokens
    toks = on.tokens[0] + ([eot] if on.finished[0] else [])
    ids = torch.tensor([[eot] + toks[:-1]])
    _, atts = model(feats[:1], ids, need_weights=True)
    ref = torch.stack([a[0] for a in atts], dim=0).permute(2, 0, 1, 3)  # (T, L, H, S)
    torch.testing.assert_close(on.attentions[0], ref, atol=1e-5, rtol=1e-4)


def test_beam_capture_follows_the_final_beam():
    model = perturbed("lora", seed=2)
    eot = model.decoder.config.vocab_size - 1
    feats = feats_for(model, B=2, seed=9)
    res = beam_search(model, feats, eot, beams=3, max_len=MAX, search=Search(capture=True))
    assert res.tokens == beam_search(model, feats, eot, beams=3, max_len=MAX).tokens
    for i in range(2):
        toks = res.tokens[i] + ([eot] if res.finished[i] else [])
        ids = torch.tensor([[eot] + toks[:-1]])
        _, atts = model(feats[i:i + 1], ids, need_weights=True)
        ref = torch.stack([a[0] for a in atts], dim=0).permute(2, 0, 1, 3)
        # fp32 sums in another order (cached steps vs one pass) drift by ~3e-5 over 14 tokens
        torch.testing.assert_close(res.attentions[i], ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_coverage_decodes_alike_cached_uncached_and_teacher_forced(kind):
    """The coverage mechanism keeps its state in the cache: one token at a time equals the whole caption
    at once, for greedy and beam search; with its weights at 0 it is the model without it."""
    plain_model = perturbed(kind, seed=2)
    model = tiny.tiny_captioner(kind, seed=2, coverage_attention=True)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in plain_model.named_parameters():
            own[name].copy_(p)
    model.eval()
    eot, feats = model.decoder.config.vocab_size - 1, feats_for(model)
    assert greedy(model, feats, eot, MAX).tokens == greedy(plain_model, feats, eot, MAX).tokens  # weights 0
    with torch.no_grad():
        for blk in model.decoder.h:
            blk.crossattention.coverage.copy_(torch.tensor([-3.0, 2.0]))
    cached = greedy(model, feats, eot, MAX, search=Search(use_cache=True))
    assert cached.tokens != greedy(plain_model, feats, eot, MAX).tokens  # the weights matter
    assert cached.tokens == greedy(model, feats, eot, MAX, search=Search(use_cache=False)).tokens == teacher_forced_argmax(
        model, feats, eot, MAX)
    a = beam_search(model, feats, eot, beams=3, max_len=MAX, search=Search(use_cache=True))
    b = beam_search(model, feats, eot, beams=3, max_len=MAX, search=Search(use_cache=False))
    assert a.tokens == b.tokens
    for i, (toks, fin, score) in enumerate(zip(a.tokens, a.finished, a.scores, strict=True)):
        n = len(toks) + (1 if fin else 0)
        assert score == pytest.approx(sequence_logprob(model, feats[i:i + 1], toks, eot, with_end=fin) / n, abs=1e-4)


@pytest.mark.parametrize("beams", [1, 3])
def test_captions_do_not_depend_on_how_many_images_are_decoded_together(tmp_path, beams):
    from hw3lib.models.decoding import Decoding, caption_images
    from hw3lib.models.loading import encoder_transform

    model = tiny.perturbed(tiny.tiny_captioner("lora", encoder=tiny.tiny_encoder()))
    paths = tiny.random_images(tmp_path, n=5, size=32)
    caps = {bs: caption_images(model, paths, tiny.TinyTokenizer(), encoder_transform(model.encoder),
                               Decoding(beams, MAX, batch_size=bs), progress=False) for bs in (1, 2, 5)}
    assert len(set(caps[1].values())) > 1  # the image matters
    assert caps[1] == caps[2] == caps[5]
