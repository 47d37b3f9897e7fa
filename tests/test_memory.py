"""The memory plan (#21): estimated from the model built on the meta device, checked against the
measured peak of real training steps on the CPU for two model sizes (within 25%), and a run that does
not fit is refused with a setting that does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hw3lib.core.errors import HW3Error
from hw3lib.core.manifest import EncoderSpec
from hw3lib.core.precision import Precision
from hw3lib.models.captioner import Captioner, CaptionerConfig
from hw3lib.models.gpt2 import GPT2, GPT2Config
from hw3lib.models.loading import create_encoder
from hw3lib.models.memory import check_fits, estimate, suggest
from hw3lib.training.config import TrainConfig

FP32 = Precision("off", "cpu", "test")
SIZES = {  # two sizes, roughly 0.5 and 2 GB of training memory
    "small": {"encoder": "vit_base_patch32_clip_224", "encoder_kwargs": {"embed_dim": 384, "depth": 6, "num_heads": 6},
              "image": [224, 224], "decoder": {"n_layer": 6, "n_embd": 384, "n_head": 6},
              "captioner": {"peft": "lora"}, "batch": 8, "tokens": 32, "live": True},
    "vitb_gpt2": {"encoder": "vit_base_patch32_clip_224", "encoder_kwargs": {}, "image": [224, 224],
                  "decoder": {"n_layer": 12, "n_embd": 768, "n_head": 12}, "captioner": {"peft": "prompt"},
                  "batch": 8, "tokens": 32, "live": True},
}


def meta_model(a):
    with torch.device("meta"):
        return Captioner(create_encoder(EncoderSpec(a["encoder"], model_kwargs=a["encoder_kwargs"]), "meta"),
                         GPT2(GPT2Config(**a["decoder"], cross_attention=True)), CaptionerConfig(**a["captioner"]))


@pytest.mark.slow
@pytest.mark.parametrize("size", list(SIZES))
def test_plan_matches_measured_peak_on_the_cpu(size):
    a = SIZES[size]
    plan = estimate(meta_model(a), a["batch"], a["tokens"], FP32, a["live"], tuple(a["image"]))
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("memory_probe.py")), json.dumps(a)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    measured = int(r.stdout.strip())
    assert abs(plan.total / measured - 1) <= 0.25, (plan.describe(), measured)


def test_plan_counts_weights_and_optimizer_exactly():
    a = SIZES["small"]
    model = meta_model(a)
    plan = estimate(model, 2, 8, FP32, live_encoder=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.trainable_weights == plan.gradients == trainable * 4 and plan.optimizer == 8 * trainable
    assert plan.frozen_weights == sum(p.numel() for p in model.parameters() if not p.requires_grad) * 4
    half = estimate(model, 2, 8, Precision("fp16", "cuda", "test"), live_encoder=False)
    assert half.frozen_weights * 2 == plan.frozen_weights and half.optimizer == plan.optimizer
    assert half.activations < plan.activations
    # activations grow with the batch; the live encoder adds its forward
    assert estimate(model, 4, 8, FP32, False).activations > plan.activations
    assert estimate(model, 2, 8, FP32, True).transient > plan.transient


def test_a_run_that_does_not_fit_is_refused_with_a_setting_that_does():
    model = meta_model(SIZES["small"])
    cfg = TrainConfig(batch_size=8, grad_accum=1, hflip=0.5)  # augmentation: no feature cache to offer
    plans = {b: estimate(model, b, 32, FP32, True) for b in (8, 4, 2)}
    budget = (plans[4].total + plans[2].total) // 2
    with pytest.raises(HW3Error) as e:
        check_fits(model, plans[8], cfg, FP32, budget)
    assert "\n" not in str(e.value) and "--batch_size=2 --grad_accum=4" in str(e.value)
    check_fits(model, plans[2], cfg, FP32, budget)  # what it names does fit
    # without augmentation the feature cache is offered first, when it is what makes the difference
    cached = estimate(model, 8, 32, FP32, False)
    if cached.total < plans[8].total:
        assert "--feature_cache=true" in suggest(model, plans[8], TrainConfig(batch_size=8), FP32, cached.total)
    frozen_only = plans[8].frozen_weights
    with pytest.raises(HW3Error, match="no batch size or accumulation"):
        check_fits(model, plans[8], cfg, FP32, frozen_only)


def test_train_plan_cli(small_models, capsys):
    from hw3lib.app.cli import main

    args = ["train", "configs/demo/lora16.toml", "--assets", str(small_models)]
    assert main([*args, "--plan", "--device=cpu"]) == 0
    out = capsys.readouterr().out
    assert "precision: fp32" in out and "memory plan:" in out and "no GPU here" in out
    assert main([*args, "--plan-gpu", "0.61@7.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the run needs about") and err.count("\n") == 1
    assert main([*args, "--plan-gpu", "24@7.5"]) == 0
    out = capsys.readouterr().out
    assert "precision: fp16: a 24 GiB GPU of compute capability 7.5 has no bf16" in out and out.endswith("fits\n")
