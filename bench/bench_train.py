"""Training steps/s with the live frozen encoder vs served from the encoder-feature cache.

ViT-B/16 CLIP-size encoder (timm, random weights, 197 tokens) + GPT-2-small-size decoder with
cross-attention and LoRA r=16 (random weights); batch 8, 20-token captions; AdamW. Each mode runs in
its own process so peak memory (max RSS) is its own. Prints `name: value` lines.

    python bench/bench_train.py [--steps 4] [--batch 8]
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def run_mode(mode: str, steps: int, batch: int) -> dict:
    import torch

    from hw3lib.core.manifest import EncoderSpec
    from hw3lib.models.captioner import Captioner, CaptionerConfig
    from hw3lib.models.gpt2 import GPT2, GPT2Config
    from hw3lib.models.loading import create_encoder

    torch.manual_seed(0)
    enc = create_encoder(EncoderSpec("vit_base_patch16_clip_224"), pretrained=False)
    model = Captioner(enc, GPT2(GPT2Config.small(cross_attention=True)), CaptionerConfig(peft="lora", lora_r=16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, 224, 224)
    ids = torch.randint(0, 50257, (batch, 20))
    cached = model.encode(images) if mode == "cache" else None  # what the cache would serve

    def step():
        feats = cached.clone() if mode == "cache" else model.encode(images)
        loss = torch.nn.functional.cross_entropy(model(feats, ids).flatten(0, 1), ids.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {"steps_per_s": 1 / dt, "s_per_step": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mode", choices=["live", "cache"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.steps, args.batch)))
        return
    res = {}
    for mode in ("live", "cache"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), "--batch",
                              str(args.batch)], capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"train_batch: {args.batch}")
    for mode in ("live", "cache"):
        print(f"train_steps_per_s_{mode}_encoder: {res[mode]['steps_per_s']:.3f}")
        print(f"train_peak_rss_mb_{mode}_encoder: {res[mode]['peak_rss_mb']:.0f}")
    print(f"train_speedup_cache_vs_live: {res['cache']['steps_per_s'] / res['live']['steps_per_s']:.2f}")


if __name__ == "__main__":
    main()
