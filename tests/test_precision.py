"""Precision by device capability (#21): bf16 from compute capability 8.0, fp16 with a loss scaler
below it, fp32 on the CPU; frozen weights stored in the half dtype, trainable ones in fp32. The CUDA
capability is mocked; the fp16 training path itself runs on the CPU."""

import pytest
import torch

from hw3lib.app.cli import main
from hw3lib.core import precision as P
from hw3lib.core.errors import HW3Error
from hw3lib.core.precision import choose_precision, store_frozen
from hw3lib.models.captioner import Captioner, CaptionerConfig
from hw3lib.models.gpt2 import GPT2, GPT2Config
from hw3lib.training.config import TrainConfig


@pytest.fixture
def gpu(monkeypatch):
    """A fake CUDA device of a chosen compute capability."""
    def make(cap, name="Fake GPU"):
        monkeypatch.setattr(P, "cuda_capability", lambda device: cap)
        monkeypatch.setattr(P, "device_name", lambda device: name)
        return torch.device("cuda")
    return make


@pytest.mark.parametrize("cap, amp, scaler", [((7, 5), "fp16", True), ((7, 0), "fp16", True), ((6, 1), "fp16", True),
                                              ((8, 0), "bf16", False), ((8, 6), "bf16", False), ((9, 0), "bf16", False)])
def test_auto_follows_the_capability(gpu, cap, amp, scaler):
    p = choose_precision("auto", gpu(cap, "NVIDIA GeForce RTX 2080 Ti"))
    assert (p.amp, p.needs_scaler, p.device_type) == (amp, scaler, "cuda")
    assert p.storage == {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    assert f"compute capability {cap[0]}.{cap[1]}" in p.describe()


def test_explicit_choices_and_the_cpu(gpu):
    with pytest.raises(HW3Error, match=r"amp=bf16: .*2080 Ti.*7\.5 has no bf16"):
        choose_precision("bf16", gpu((7, 5), "NVIDIA GeForce RTX 2080 Ti"))
    assert choose_precision("fp16", gpu((8, 0))).amp == "fp16"
    assert choose_precision("off", gpu((9, 0))).dtype is None
    cpu = choose_precision("auto", "cpu")
    assert (cpu.amp, cpu.dtype, cpu.storage, cpu.needs_scaler) == ("off", None, torch.float32, False)
    assert choose_precision("fp16", "cpu").dtype == torch.float16
    with pytest.raises(HW3Error, match="amp='fp8'"):
        choose_precision("fp8", "cpu")


def test_decoding_on_cuda_uses_the_capabilitys_dtype(gpu, monkeypatch):
    """fast_decoding enters the precision's autocast on CUDA: fp16 on a 2080 Ti, not bf16."""
    from hw3lib.models import fastpath as inference

    seen = []
    monkeypatch.setattr(inference.torch, "autocast", lambda device_type, dtype: seen.append((device_type, dtype))
                        or __import__("contextlib").nullcontext())
    model = Captioner(None, GPT2(GPT2Config.tiny(cross_attention=True)), CaptionerConfig(peft="none"), encoder_dim=8)
    for cap, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16)):
        gpu(cap)
        with inference.fast_decoding(model, "cuda"):
            pass
        assert seen.pop() == ("cuda", dtype)


def test_frozen_weights_half_trainable_fp32():
    model = Captioner(None, GPT2(GPT2Config.tiny(cross_attention=True)), CaptionerConfig(peft="lora", lora_r=2),
                      encoder_dim=8)
    store_frozen(model, P.Precision("fp16", "cuda", "test"))
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.float16), name
    assert model.decoder.wte.weight.dtype == torch.float16 and model.proj.weight.dtype == torch.float32


def test_fp16_training_runs_on_the_cpu(tmp_path):
    """Eight steps of the real Trainer under fp16 autocast with a GradScaler: finite losses, trainable
    tensors fp32 and changed, frozen ones fp16 and unchanged."""
    from hw3lib.training.loop import CaptionData, Trainer
    from hw3lib.training.runfolder import RunFolder

    torch.manual_seed(0)
    model = Captioner(None, GPT2(GPT2Config.tiny(cross_attention=True)), CaptionerConfig(peft="lora", lora_r=2),
                      encoder_dim=8)
    precision = choose_precision("fp16", "cpu")
    store_frozen(model, precision)
    feats = torch.randn(16, 5, 8)
    data = CaptionData([None] * 16, [["x"]] * 16, [(i, [1 + i, 2, 3]) for i in range(16)], 299)
    cfg = TrainConfig(batch_size=2, epochs=1, lr=1e-2, amp="fp16", device="cpu")
    t = Trainer(model, data, cfg, RunFolder(tmp_path / "run"), lambda idx: feats[idx], precision=precision)
    assert t.scaler is not None and t.precision.dtype == torch.float16
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    order = t.epoch_order()
    losses = [t.step(order)["loss"] for _ in range(8)]  # the scaler skips steps until its scale fits
    assert all(torch.isfinite(torch.tensor(losses)))
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, n
        else:
            assert p.dtype == torch.float16 and torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_print_config_states_the_choice(capsys):
    assert main(["train", "configs/demo/lora16.toml", "--print-config", "--device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "# amp = 'auto' on this machine: fp32: cpu, where fp32 is the measured default" in out
