"""GPU smoke test at real size, offline: random weights, no hub, a few minutes (`make gpu-smoke`).

Builds vit_gigantic_patch14_clip_224 (frozen encoder) + GPT-2 small decoder with cross-attention +
LoRA r=16 (the report's best setting) in the precision `amp=auto` chooses for the card (bf16 from
compute capability 8.0, fp16 with loss scaling below: `hw3lib.core.precision`), frozen weights stored in
that half dtype, and prints `name: value` lines:
  - the card and the precision choice;
  - the memory plan (`hw3lib.models.memory`) against torch.cuda.max_memory_allocated, live encoder and cached;
  - training steps/s and images/s with the live encoder and with cached encoder tokens;
  - the encoder's model FLOPs utilisation (MFU) on its own, and the whole training step's;
  - batched greedy / beam-3 decoding tokens/s, and greedy captions for 1,400 random-feature images
    through `fast_decoding` (as `hw3 caption` decodes on the GPU): images/s.

    python bench/gpu_smoke.py                       # on an NVIDIA GPU
    python bench/gpu_smoke.py --tiny --device cpu   # the same code path at toy size (a test runs it)
"""

import argparse
import time

import torch

from hw3lib.core.manifest import EncoderSpec
from hw3lib.core.precision import choose_precision, device_name, store_frozen
from hw3lib.models.captioner import Captioner, CaptionerConfig, parameter_report
from hw3lib.models.decoding import Search, beam_search, greedy
from hw3lib.models.gpt2 import GPT2, GPT2Config
from hw3lib.models.loading import create_encoder
from hw3lib.models.memory import estimate
from hw3lib.training.loop import batch_loss

# dense tensor-core peaks (TFLOP/s) by card and half dtype; fp32 accumulation where the card halves it
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp16": 989.0}, "H200": {"bf16": 989.0, "fp16": 989.0},
               "A100": {"bf16": 312.0, "fp16": 312.0}, "L4": {"bf16": 121.0, "fp16": 121.0},
               "RTX 2080 Ti": {"fp16": 53.8}, "T4": {"fp16": 65.0}}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats, out


def peak_tflops(device, amp):
    if device.type != "cuda":
        return None
    name = device_name(device)
    return next((v.get(amp) for k, v in PEAK_TFLOPS.items() if k in name), None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--caption-images", type=int, default=1400, help="random-feature images to caption")
    p.add_argument("--caption-batch", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="toy sizes (CPU check of the script itself)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.tiny:
        spec = EncoderSpec("vit_base_patch32_clip_224", model_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2,
                                                                     "img_size": 64, "patch_size": 16})
        dcfg = GPT2Config.tiny(cross_attention=True)
        size, batch = 64, 4
    else:
        spec = EncoderSpec("vit_gigantic_patch14_clip_224")
        dcfg = GPT2Config.small(cross_attention=True)
        size, batch = 224, args.batch
    precision = choose_precision("auto", device)
    print(f"device: {device_name(device)}")
    print(f"precision: {precision.describe()}")
    t0 = time.perf_counter()
    cap = CaptionerConfig(peft="lora", lora_r=16)
    enc = create_encoder(spec, pretrained=False, device=device, dtype=precision.storage)
    model = store_frozen(Captioner(enc, GPT2(dcfg), cap).to(device), precision)
    rep = parameter_report(model)
    print(f"build_s: {time.perf_counter() - t0:.1f}")
    print(f"trainable_params: {rep['trainable']}")
    print(f"frozen_params: {rep['frozen']}")
    with torch.device("meta"):
        meta = Captioner(create_encoder(spec, "meta"), GPT2(dcfg), cap)
    images = torch.randn(batch, 3, size, size, device=device)
    pairs = [(i, torch.randint(0, dcfg.vocab_size - 1, (args.tokens - 1,)).tolist()) for i in range(batch)]
    eot = dcfg.vocab_size - 1
    with precision.autocast():
        cached = model.encode(images)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None

    def train_step(feats_fn):
        def step():
            feats = feats_fn()
            loss = batch_loss(model, feats, pairs, eot, args.tokens, precision.autocast)
            opt.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        return step

    results = {}
    for mode, live in (("live", True), ("cache", False)):
        fn = (lambda: model.encode(images)) if live else (lambda: cached)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        dt, _ = timed(train_step(fn), device, args.steps)
        results[mode] = dt
        print(f"train_steps_per_s_{mode}: {1 / dt:.2f}")
        print(f"train_images_per_s_{mode}: {batch / dt:.1f}")
        plan = estimate(meta, batch, args.tokens, precision, live, (size, size))
        print(f"memory_plan_gb_{mode}: {plan.total / 1e9:.4f}")
        if device.type == "cuda":
            measured = torch.cuda.max_memory_allocated(device)
            print(f"train_peak_gpu_mem_gb_{mode}: {measured / 1e9:.4f}")
            print(f"memory_plan_over_measured_{mode}: {plan.total / measured:.2f}")
    print(f"train_speedup_cache_vs_live: {results['live'] / results['cache']:.2f}")
    enc_params = sum(q.numel() for q in enc.parameters())
    enc_flops = 2 * enc_params * cached.shape[1] * batch  # forward only: the encoder is frozen
    with torch.no_grad(), precision.autocast():
        dt_enc, _ = timed(lambda: model.encode(images), device, args.steps)
    dec_params = sum(q.numel() for n, q in model.named_parameters() if not n.startswith("encoder."))
    step_flops = enc_flops + 6 * dec_params * batch * args.tokens
    peak = peak_tflops(device, precision.amp)
    print(f"encoder_tflops: {enc_flops / dt_enc / 1e12:.4f}")
    print(f"train_tflops_live: {step_flops / results['live'] / 1e12:.4f}")
    if peak:
        print(f"encoder_mfu: {enc_flops / dt_enc / 1e12 / peak:.3f}")
        print(f"train_mfu_live: {step_flops / results['live'] / 1e12 / peak:.3f}")
    model.eval()
    with torch.no_grad(), precision.autocast():
        dt, _ = timed(lambda: greedy(model, cached, eot, args.tokens, search=Search(min_len=args.tokens)), device, 2)
        print(f"greedy_tokens_per_s: {batch * args.tokens / dt:.0f}")
        dt3, _ = timed(lambda: beam_search(model, cached, eot, 3, args.tokens, search=Search(min_len=args.tokens)), device, 1)
        print(f"beam3_tokens_per_s: {batch * args.tokens / dt3:.0f}")
        print(f"beam3_over_greedy_time: {dt3 / dt:.2f}")
    caption_many(model, cached.shape[1], eot, args, device, precision)
    if device.type == "cuda":
        print(f"peak_gpu_mem_gb: {torch.cuda.max_memory_allocated(device) / 1e9:.2f}")


def caption_many(model, n_tokens, eot, args, device, precision):
    """Greedy captions (up to --tokens) for --caption-images random-feature images, through
    `fast_decoding` as `hw3 caption` runs (the card's half precision + SDPA on CUDA; packed fp32 on CPU)."""
    from hw3lib.models.fastpath import fast_decoding

    g = torch.Generator(device=device).manual_seed(0)
    n, bs = args.caption_images, args.caption_batch
    sync(device)
    t0 = time.perf_counter()
    with fast_decoding(model, device, rows_hint=bs, precision=precision):
        for i in range(0, n, bs):
            feats = torch.randn(min(bs, n - i), n_tokens, model.encoder_dim, device=device, generator=g)
            greedy(model, feats, eot, args.tokens)
    sync(device)
    dt = time.perf_counter() - t0
    print(f"caption_random_features_images: {n}")
    print(f"caption_random_features_s: {dt:.2f}")
    print(f"caption_random_features_images_per_s: {n / dt:.1f}")


if __name__ == "__main__":
    main()
