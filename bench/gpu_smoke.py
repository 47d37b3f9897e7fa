"""GPU smoke test at real size, offline: random weights, no hub, finishes in a few minutes.

Builds vit_gigantic_patch14_clip_224 (frozen encoder) + GPT-2 small decoder with cross-attention +
LoRA r=16 (the report's best setting), then measures in bf16:
  - training steps with the live encoder and with cached encoder tokens (images/s, peak memory)
  - batched greedy and beam-3 decoding with the KV cache (tokens/s)
  - greedy captions for 1,400 random-feature images through `fast_decoding` (time, images/s)
  - model FLOPs utilisation (MFU) of the training step: 6 * trainable-path params * tokens approx.
Prints `name: value` lines.

    python bench/gpu_smoke.py                 # on an NVIDIA GPU
    python bench/gpu_smoke.py --tiny --device cpu   # the same code path at toy size (used by a test)
"""

import argparse
import time

import torch

from hw3lib.assets import EncoderSpec, create_encoder
from hw3lib.captioner import Captioner, CaptionerConfig, parameter_report
from hw3lib.decoder import GPT2, GPT2Config
from hw3lib.generate import beam_search, greedy

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "RTX 2080 Ti": 107.0}


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
    t0 = time.perf_counter()
    enc = create_encoder(spec, pretrained=False).to(device)
    model = Captioner(enc, GPT2(dcfg), CaptionerConfig(peft="lora", lora_r=16)).to(device)
    rep = parameter_report(model)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"build_s: {time.perf_counter() - t0:.1f}")
    print(f"trainable_params: {rep['trainable']}")
    print(f"frozen_params: {rep['frozen']}")
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(0, dcfg.vocab_size, (batch, 20), device=device)
    with amp:
        cached = model.encode(images)

    def train_step(feats_fn):
        def step():
            with amp:
                feats = feats_fn()
                logits = model(feats, ids)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.roll(-1, 1).flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    results = {}
    for mode, fn in (("live", lambda: model.encode(images)), ("cache", lambda: cached)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dt, _ = timed(train_step(fn), device, args.steps)
        results[mode] = dt
        print(f"train_images_per_s_{mode}: {batch / dt:.1f}")
        if device.type == "cuda":
            print(f"train_peak_gpu_mem_gb_{mode}: {torch.cuda.max_memory_allocated(device) / 2**30:.2f}")
    print(f"train_speedup_cache_vs_live: {results['live'] / results['cache']:.2f}")
    # MFU of the live step: encoder forward (2 * params * tokens) + decoder forward/backward (6 * params * tokens)
    enc_tokens = cached.shape[1] * batch
    dec_params = sum(q.numel() for n, q in model.named_parameters() if not n.startswith("encoder."))
    flops = 2 * sum(q.numel() for q in enc.parameters()) * enc_tokens + 6 * dec_params * ids.numel()
    achieved = flops / results["live"] / 1e12
    print(f"train_tflops_live: {achieved:.1f}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak:
            print(f"train_mfu_live: {achieved / peak:.3f}")
    model.eval()
    eot = dcfg.vocab_size - 1
    with torch.no_grad(), amp:
        dt, _ = timed(lambda: greedy(model, cached, eot, args.tokens, min_len=args.tokens), device, 2)
        print(f"greedy_tokens_per_s: {batch * args.tokens / dt:.0f}")
        dt3, _ = timed(lambda: beam_search(model, cached, eot, 3, args.tokens, min_len=args.tokens), device, 1)
        print(f"beam3_tokens_per_s: {batch * args.tokens / dt3:.0f}")
        print(f"beam3_over_greedy_time: {dt3 / dt:.2f}")
    caption_many(model, cached.shape[1], eot, args, device)
    if device.type == "cuda":
        print(f"peak_gpu_mem_gb: {torch.cuda.max_memory_allocated(device) / 2**30:.2f}")


def caption_many(model, n_tokens, eot, args, device):
    """Greedy captions (up to --tokens) for --caption-images random-feature images, through
    `fast_decoding` as `hw3 caption` runs (bf16 autocast + SDPA on CUDA; packed fp32 on CPU)."""
    from hw3lib.inference import fast_decoding

    g = torch.Generator(device=device).manual_seed(0)
    n, bs = args.caption_images, args.caption_batch
    sync(device)
    t0 = time.perf_counter()
    with fast_decoding(model, device, rows_hint=bs):
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
