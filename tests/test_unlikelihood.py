"""Unlikelihood training against re-naming an object (hw3lib/training/unlikelihood.py), on hand-made
logits whose values are worked out by hand."""

import math
from pathlib import Path

import pytest
import torch

from hw3lib.training.unlikelihood import repeat_candidates, unlikelihood, word_end_tokens

NOUNS = torch.tensor([3, 4])


def logits_from(probs):
    """(1, T, V) logits whose softmax is `probs` (rows of probabilities)."""
    return torch.tensor([probs], dtype=torch.float64).log()


def test_candidates_are_nouns_named_before_less_the_reference():
    # "a circle . circle <pad>": noun 3 named at t=1; at t=2 it is a candidate; at t=3 the reference is 3 itself
    targets = torch.tensor([[1, 3, 2, 3, -100]])
    cand = repeat_candidates(targets, NOUNS)
    assert cand[0, :, 0].tolist() == [False, False, True, False, False]
    assert not cand[0, :, 1].any()  # noun 4 never named
    # two objects named: both are candidates after them, padding never
    cand = repeat_candidates(torch.tensor([[3, 4, 1, -100]]), NOUNS)
    assert cand[0].tolist() == [[False, False], [True, False], [True, True], [False, False]]


def test_the_term_on_hand_made_logits():
    targets = torch.tensor([[1, 3, 2, 3]])
    probs = [[0.2] * 5, [0.2] * 5, [0.1, 0.2, 0.3, 0.25, 0.15], [0.2] * 5]
    got = unlikelihood(logits_from(probs), targets, NOUNS)
    assert got.item() == pytest.approx(-math.log(1 - 0.25))  # one candidate: noun 3 at t=2
    targets = torch.tensor([[3, 4, 1, 0]])
    probs = [[0.2] * 5, [0.1, 0.1, 0.1, 0.6, 0.1], [0.1, 0.1, 0.1, 0.3, 0.4], [0.2] * 5]
    want = (-math.log(0.4) - math.log(0.7) - math.log(0.6) - math.log(0.8) - math.log(0.8)) / 5
    assert unlikelihood(logits_from(probs), targets, NOUNS).item() == pytest.approx(want)


def test_no_candidate_is_zero_with_a_graph():
    logits = torch.zeros(1, 3, 5, requires_grad=True)
    got = unlikelihood(logits, torch.tensor([[1, 2, -100]]), NOUNS)
    assert got.item() == 0.0 and got.requires_grad


def test_a_step_on_the_term_lowers_the_repeated_noun():
    targets = torch.tensor([[1, 3, 2]])
    logits = torch.zeros(1, 3, 5, requires_grad=True)
    unlikelihood(logits, targets, NOUNS).backward()
    with torch.no_grad():
        after = (logits - 0.5 * logits.grad).softmax(-1)
    assert after[0, 2, 3] < 0.2 and torch.allclose(after[0, 0], torch.full((5,), 0.2))  # only t=2 moves


def test_word_end_tokens_are_where_p3_reads_a_noun():
    from hw3lib.core.tokenizer import load_gpt2_tokenizer
    from hw3lib.demo import phrasing

    gpt2 = Path(__file__).parent / "data" / "gpt2"
    tok = load_gpt2_tokenizer(gpt2 / "encoder.json", gpt2 / "vocab.bpe")
    ends = word_end_tokens(tok, ["hexagon", "circle"])
    ids = tok.encode("a red hexagon and a blue circle")
    texts = [tok.id_to_token_text(i) for i in ids]
    at = [t for t, _ in phrasing.token_mentions(texts, ["hexagon", "circle"], ["red", "blue"])]
    assert sorted(ids[t] for t in at) == ends.tolist() and len(tok.encode(" hexagon")) > 1


def test_the_setting_is_checked():
    from hw3lib.core.errors import HW3Error
    from hw3lib.training.config import load_config

    with pytest.raises(HW3Error, match="unlikelihood"):
        load_config(Path(__file__).parents[1] / "configs" / "demo" / "lora16.toml", {"unlikelihood": "-1"})
    _, cfg = load_config(Path(__file__).parents[1] / "configs" / "demo" / "lora16.toml", {"unlikelihood": "0.5"})
    assert cfg.unlikelihood == 0.5


def test_training_loss_adds_the_weighted_term():
    """On a tiny random captioner: the loss is the cross-entropy plus weight x the term recomputed from the
    same logits, and the term's value is logged."""
    import contextlib

    from hw3lib.core.tokenizer import teacher_forcing_batch
    from hw3lib.training.config import TrainConfig
    from hw3lib.training.loop import CaptionData, training_loss
    from tests.tiny import ENC_DIM, EOT, perturbed, tiny_captioner

    model = perturbed(tiny_captioner("lora"))
    pairs = [(0, [5, 3, 7, 3, 9]), (1, [4, 8, 4, 3])]
    data = CaptionData([Path("a.png"), Path("b.png")], [["x"], ["y"]], pairs, EOT, nouns=NOUNS)
    feats = torch.randn(2, 5, ENC_DIM, generator=torch.Generator().manual_seed(0))
    plain = TrainConfig(unlikelihood=0.0)
    with torch.no_grad():
        ce, parts0 = training_loss(model, feats, pairs, data, plain, contextlib.nullcontext)
        loss, parts = training_loss(model, feats, pairs, data, TrainConfig(unlikelihood=0.5), contextlib.nullcontext)
        x, y = teacher_forcing_batch([t for _, t in pairs], EOT, plain.max_caption_tokens)
        want = unlikelihood(model(feats, x), y, NOUNS)
    assert "unlikelihood" not in parts0 and parts["unlikelihood"] == pytest.approx(want.item(), rel=1e-6)
    assert loss.item() == pytest.approx(ce.item() + 0.5 * want.item(), rel=1e-6) and want.item() > 0
