"""Training on the real tokens only (hw3lib/models/packing.py): the layouts round-trip exactly, and a packed
forward and backward give the padded batch's logits, cross-attention and gradients at every real token,
for every PEFT kind and the coverage mechanism."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from hw3lib.core.tokenizer import teacher_forcing_batch
from hw3lib.models.packing import Packing
from hw3lib.models.peft import PEFT_KINDS
from hw3lib.training import attention_losses
from hw3lib.training.loop import _teacher_forced
from tests.tiny import EOT, encoder_tokens, perturbed, tiny_captioner

CAPTIONS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]  # lengths 7, 2, 4: most of the batch is padding


def test_layouts_round_trip_exactly():
    real = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    p = Packing.of(real)
    assert p.index.tolist() == [0, 1, 3, 6, 7, 8]
    x = torch.randn(3, 3, 2)
    packed = p.pack(x)
    assert torch.equal(packed, x[real])  # row by row, the real tokens
    assert torch.equal(p.unpack(packed), x * real[..., None])  # back in place, zeros at the padding
    z = torch.randn(6, 4, 5)
    assert torch.equal(p.pack(p.unpack(z)), z)


def test_padding_before_a_real_token_is_refused():
    with pytest.raises(ValueError, match="before its padding"):
        Packing.of(torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="bool mask"):
        Packing.of(torch.ones(2, 3))


def _batch():
    x, y = teacher_forcing_batch(CAPTIONS, EOT, 40)
    return x, y, Packing.of(y != -100)


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_packed_forward_and_gradients_equal_the_padded_ones(kind):
    model = perturbed(tiny_captioner(kind, seed=3), seed=4).train()
    feats = encoder_tokens(B=len(CAPTIONS), S=6)
    x, y, packing = _batch()
    real = y != -100

    logits, atts = model(feats, x, need_weights=True)  # (B, T, V)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    packed, packed_atts = model(feats, x, need_weights=True, packing=packing)  # (N, V)
    assert packed.shape == (int(real.sum()), logits.shape[-1])
    torch.testing.assert_close(packed, logits[real], rtol=1e-5, atol=1e-6)
    for a, b in zip(packed_atts, atts, strict=True):  # (B, nh, T, S): equal wherever a real token asks
        torch.testing.assert_close(a.transpose(1, 2)[real], b.transpose(1, 2)[real], rtol=1e-5, atol=1e-6)
    F.cross_entropy(packed, packing.pack(y)).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, padded_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_coverage_attention_packed_equals_padded():
    model = perturbed(tiny_captioner("lora", seed=5, coverage_attention=True), seed=6)
    feats = encoder_tokens(B=len(CAPTIONS), S=6)
    x, y, packing = _batch()
    real = y != -100
    logits, atts = model(feats, x, need_weights=True)
    packed, packed_atts = model(feats, x, need_weights=True, packing=packing)
    torch.testing.assert_close(packed, logits[real], rtol=1e-5, atol=1e-6)
    maps, packed_maps = attention_losses.mean_map(atts), attention_losses.mean_map(packed_atts)
    torch.testing.assert_close(packed_maps[real], maps[real], rtol=1e-5, atol=1e-6)


def test_the_training_loss_is_the_mean_over_real_tokens():
    model = perturbed(tiny_captioner("lora", seed=7), seed=8)
    feats = encoder_tokens(B=len(CAPTIONS), S=6)
    pairs = [(i, c) for i, c in enumerate(CAPTIONS)]
    ce, y, _, logits, packing = _teacher_forced(model, feats, pairs, EOT, 40, contextlib.nullcontext)
    want = F.cross_entropy(model(feats, teacher_forcing_batch(CAPTIONS, EOT, 40)[0]).flatten(0, 1), y.flatten(),
                           ignore_index=-100)
    torch.testing.assert_close(ce, want, rtol=1e-6, atol=1e-6)
    assert logits.shape[0] == sum(len(c) + 1 for c in CAPTIONS) == len(packing.index)
