"""The captioner and its PEFT kinds on tiny models: what trains, equality with the pretrained LM at
initialisation, learning, exact checkpoint round trips, and the real-size budget."""

import pytest
import torch

from hw3lib.assets import load_decoder_from_manifest, load_manifest
from hw3lib.captioner import (
    PEFT_KINDS,
    Captioner,
    CaptionerConfig,
    build_captioner,
    check_budget,
    parameter_report,
    read_checkpoint,
    save_checkpoint,
)
from hw3lib.decoder import GPT2, GPT2Config
from hw3lib.files import HW3Error

SMALL = {"lora_r": 4, "lora_alpha": 8.0, "adapter_dim": 8, "virtual_tokens": 3}
EXPECTED = {"none": set(), "lora": {"lora"}, "dora": {"lora"}, "ia3": {"ia3"}, "adapter": {"adapter"},
            "prompt": {"prompt"}, "prefix": {"prefix"}}


@pytest.fixture(scope="module")
def manifest(small_models):
    return load_manifest(small_models)


def make(manifest, kind, **kw):
    torch.manual_seed(0)
    return build_captioner(manifest, CaptionerConfig(peft=kind, **(SMALL | kw)))


def batch(model, B=4, T=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, 65, model.encoder_dim, generator=g)
    ids = torch.randint(0, model.decoder.config.vocab_size, (B, T), generator=g)
    return feats, ids


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_only_intended_tensors_train(manifest, kind):
    model = make(manifest, kind)
    report = parameter_report(model)
    trainable_parts = {c for c in report if c not in ("trainable", "frozen", "frozen")} - {"frozen"}
    assert trainable_parts == {"projection", "cross-attention"} | EXPECTED[kind]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.startswith("encoder.") for n in names)
    base = [n for n in names if ".crossattention." not in n and ".ln_cross_attn." not in n and not n.startswith("proj.")]
    assert all(any(t in n for t in ("lora_", "ia3_", "adapter_", "prompt.", "prefix.")) for n in base), base
    # one optimiser step moves trainable tensors only
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    feats, ids = batch(model)
    for _ in range(2):  # two steps: zero-initialised parts receive gradient only after the first
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(feats, ids).flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(before[n], p), f"frozen tensor {n} changed"
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)}
    assert any(n.startswith("proj.") for n in changed) and any(".crossattention." in n for n in changed)


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_untrained_model_is_the_pretrained_lm(manifest, kind):
    model = make(manifest, kind).eval()
    lm = load_decoder_from_manifest(manifest).eval()
    feats, ids = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(model(feats, ids), lm(ids), atol=1e-5, rtol=1e-5)
        if kind != "dora":  # DoRA renormalises the weight: equal up to rounding only
            assert torch.equal(model(feats, ids), lm(ids))


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_loss_falls_on_a_small_batch(manifest, kind):
    from hw3lib.assets import load_tokenizer
    from hw3lib.tokenizer import teacher_forcing_batch

    model = make(manifest, kind)
    tok = load_tokenizer(manifest)
    caps = ["a large red circle above a small blue square", "three shapes: a green star, a ring and a white moon"]
    x, y = teacher_forcing_batch(tok.encode_batch(caps), tok.eot_id, 40)
    feats = torch.randn(2, 65, model.encoder_dim, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(feats, x).flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0] and min(losses[-5:]) < min(losses[:5]), losses


@pytest.mark.parametrize("kind", PEFT_KINDS)
def test_checkpoint_round_trip_is_exact(manifest, kind, tmp_path):
    model = make(manifest, kind)
    with torch.no_grad():  # move every trainable tensor off its initial value
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(tmp_path / "ck.safetensors", model, {"step": 7})
    cfg, tensors, info = read_checkpoint(tmp_path / "ck.safetensors")
    assert cfg == model.config and info["meta"]["step"] == 7
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    other = make(manifest, kind)
    other.load_trainable(tensors)
    feats, ids = batch(model)
    with torch.no_grad():
        assert torch.equal(model.eval()(feats, ids), other.eval()(feats, ids))


def test_checkpoint_from_another_architecture(manifest, tmp_path):
    save_checkpoint(tmp_path / "r4.safetensors", make(manifest, "lora"))
    _, tensors, _ = read_checkpoint(tmp_path / "r4.safetensors")
    with pytest.raises(HW3Error, match="shape mismatch"):
        make(manifest, "lora", lora_r=8).load_trainable(tensors, "r4.safetensors")
    with pytest.raises(HW3Error, match="unexpected"):
        make(manifest, "none").load_trainable(tensors, "r4.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(HW3Error, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")


def test_report_setting_at_real_size_is_under_budget(capsys):
    from hw3lib.assets import EncoderSpec, create_encoder
    from hw3lib.captioner import format_report

    enc = create_encoder(EncoderSpec("vit_gigantic_patch14_clip_224"), device="meta")
    dec = GPT2(GPT2Config.small(cross_attention=True))
    model = Captioner(None, dec, CaptionerConfig(peft="lora", lora_r=16), encoder_dim=enc.num_features)
    report = parameter_report(model)
    print("report setting (vit_gigantic + GPT-2 small + cross-attention + LoRA r=16):", format_report(report))
    assert enc.num_features == 1664
    assert report["projection"] == 1664 * 768 + 768
    assert report["lora"] == 12 * 16 * ((768 + 2304) + (768 + 768) + (768 + 3072) + (3072 + 768))
    assert report["trainable"] < 35_000_000 and check_budget(model, 35_000_000) == report["trainable"]
    with pytest.raises(HW3Error, match="exceed the budget"):
        check_budget(model, 10_000_000)


def test_unknown_peft_kind():
    with pytest.raises(HW3Error, match="unknown peft kind"):
        CaptionerConfig(peft="bitfit")
