"""The compact GPT-2 against transformers' GPT2LMHeadModel, and the course's weights-file format."""

import pickle

import pytest
import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from hw3lib.core.errors import HW3Error
from hw3lib.models.decoder_file import (
    decoder_state_dict,
    export_decoder_from_transformers,
    load_decoder,
    normalise_gpt2_state_dict,
    save_decoder,
)
from hw3lib.models.gpt2 import GPT2, GPT2Config

from .conftest import run_cli


def hf_model(cfg: GPT2Config, seed=0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(HFConfig(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                  n_layer=cfg.n_layer, n_head=cfg.n_head, add_cross_attention=cfg.cross_attention,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, attn_implementation="eager"))
    with torch.no_grad():  # biases are zero at init; make them random so the test can see them
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return hf.eval()


def ours_from_hf(hf, cfg) -> GPT2:
    model = GPT2(cfg).eval()
    model.load_state_dict(normalise_gpt2_state_dict(hf.state_dict(), "hf"), strict=True)
    return model


@pytest.mark.parametrize("shape", ["tiny", "small"])
def test_logits_equal_transformers(shape):
    cfg = GPT2Config.tiny() if shape == "tiny" else GPT2Config.small()
    hf = hf_model(cfg)
    ours = ours_from_hf(hf, cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_cross_attention_logits_equal_transformers():
    cfg = GPT2Config.tiny(cross_attention=True)
    hf = hf_model(cfg, seed=1)
    ours = ours_from_hf(hf, cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 9))
    enc = torch.randn(3, 17, cfg.n_embd)
    with torch.no_grad():
        ref = hf(idx, encoder_hidden_states=enc).logits
        got = ours(idx, enc)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_export_back_to_transformers_layout():
    cfg = GPT2Config.tiny()
    ours = GPT2(cfg).eval()
    hf = hf_model(cfg)
    sd = {f"transformer.{k}": v for k, v in decoder_state_dict(ours).items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith(".attn.bias") for k in missing)
    hf.tie_weights()
    idx = torch.randint(0, cfg.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)


def test_file_round_trip_is_exact_and_shape_inferred(tmp_path):
    cfg = GPT2Config.tiny(n_layer=3, n_embd=48, n_head=3, vocab_size=123, block_size=40)
    ours = GPT2(cfg).eval()
    save_decoder(ours, tmp_path / "decoder_model.bin")
    sd = torch.load(tmp_path / "decoder_model.bin", weights_only=True)
    assert "wte.weight" in sd and "lm_head.weight" not in sd and not any(k.startswith("transformer.") for k in sd)
    assert sd["h.0.attn.c_attn.weight"].shape == (48, 144)  # Conv1D layout (in, out)
    loaded = load_decoder(tmp_path / "decoder_model.bin", n_head=3)
    assert (loaded.config.n_layer, loaded.config.n_embd, loaded.config.vocab_size, loaded.config.block_size) == (3, 48, 123, 40)
    idx = torch.randint(0, 123, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(idx), ours(idx))


def test_gpt2_small_head_count_is_inferred(tmp_path):
    cfg = GPT2Config.tiny(n_embd=768, n_layer=1, vocab_size=50)
    save_decoder(GPT2(cfg), tmp_path / "d.bin")
    assert load_decoder(tmp_path / "d.bin").config.n_head == 12


def test_real_checkpoint_extras_are_accepted(tmp_path):
    """Public GPT-2 files carry causal-mask buffers and may carry a tied lm_head: both are fine."""
    cfg = GPT2Config.tiny()
    ours = GPT2(cfg)
    sd = decoder_state_dict(ours)
    sd["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    sd["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    sd["lm_head.weight"] = sd["wte.weight"].clone()
    torch.save(sd, tmp_path / "d.bin")
    load_decoder(tmp_path / "d.bin", n_head=2)
    sd["lm_head.weight"] = sd["wte.weight"] + 1
    torch.save(sd, tmp_path / "d.bin")
    with pytest.raises(HW3Error, match="must be tied"):
        load_decoder(tmp_path / "d.bin", n_head=2)


@pytest.mark.parametrize("mutate, msg", [
    (lambda sd: sd.pop("h.1.mlp.c_fc.weight"), r"missing 1: h\.1\.mlp\.c_fc\.weight"),
    (lambda sd: sd.update({"h.0.attn.extra": torch.zeros(1)}), r"unexpected 1: h\.0\.attn\.extra"),
    (lambda sd: sd.update({"h.0.ln_1.weight": torch.zeros(5)}), r"shape mismatch 1: h\.0\.ln_1\.weight"),
    (lambda sd: sd.pop("wte.weight"), "missing key 'wte.weight'"),
])
def test_bad_weights_are_listed(tmp_path, mutate, msg):
    sd = decoder_state_dict(GPT2(GPT2Config.tiny()))
    mutate(sd)
    torch.save(sd, tmp_path / "d.bin")
    with pytest.raises(HW3Error, match=msg) as e:
        load_decoder(tmp_path / "d.bin", n_head=2)
    assert "d.bin" in str(e.value)


def test_truncated_and_wrong_format_files(tmp_path):
    save_decoder(GPT2(GPT2Config.tiny()), tmp_path / "d.bin")
    data = (tmp_path / "d.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(HW3Error, match="not a readable weights file"):
        load_decoder(tmp_path / "t.bin")
    (tmp_path / "x.bin").write_text("hello")
    with pytest.raises(HW3Error, match="not a readable weights file"):
        load_decoder(tmp_path / "x.bin")
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(HW3Error, match="empty file"):
        load_decoder(tmp_path / "e.bin")
    with pytest.raises(HW3Error, match="not found"):
        load_decoder(tmp_path / "nope.bin")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"wte.weight": _Payload(str(marker))}, f)
    with pytest.raises(HW3Error, match="not a readable weights file"):
        load_decoder(tmp_path / "evil.bin")
    assert not marker.exists()


def test_export_decoder_cli_from_transformers_folder(tmp_path):
    cfg = GPT2Config.tiny()
    hf = hf_model(cfg, seed=3)
    hf.save_pretrained(tmp_path / "gpt2")
    r = run_cli("export-decoder", tmp_path / "gpt2", tmp_path / "decoder_model.bin")
    assert r.returncode == 0, r.stderr
    loaded = load_decoder(tmp_path / "decoder_model.bin", n_head=cfg.n_head)
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
    r = run_cli("export-decoder", tmp_path / "nothing", tmp_path / "x.bin")
    assert r.returncode == 2 and "no model.safetensors" in r.stderr


def test_export_uses_config_head_count(tmp_path):
    cfg = GPT2Config.tiny(n_head=4)
    hf = hf_model(cfg)
    hf.save_pretrained(tmp_path / "gpt2")
    export_decoder_from_transformers(tmp_path / "gpt2", tmp_path / "d.bin")
    loaded = load_decoder(tmp_path / "d.bin", n_head=4)
    idx = torch.randint(0, cfg.vocab_size, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), hf(idx).logits, atol=1e-4, rtol=1e-4)
