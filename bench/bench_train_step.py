"""One training step of the demo-size captioner on the CPU, one thread, as the P2 runs take it: the padded
batch against the packed one (`hw3lib/models/packing.py`: only the real tokens through the per-token
layers), and torch's default AdamW loop against the fused kernel (`hw3lib/core/optimizers.py`). Also one
AdamW update of the demo CLIP's parameters (its token embedding holds a 49,408-token vocabulary).

The four step kinds alternate, step by step, in one process, so that a noisy machine slows them alike;
the medians are printed as `name: value` lines (milliseconds), with the ratios.

Demo sizes: GPT-2 with 4 layers, width 128, 4 heads, vocabulary 423, cross-attention and LoRA r=16;
encoder tokens (32, 65, 128) as the feature cache serves them; caption lengths drawn from 5 to 18 tokens
(the demo captions' range), attention supervision's maps returned.

    python bench/bench_train_step.py [--steps 60]
"""

import argparse
import statistics
import time


def captioner_steps(steps: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from hw3lib.core.tokenizer import teacher_forcing_batch
    from hw3lib.models.captioner import Captioner, CaptionerConfig
    from hw3lib.models.gpt2 import GPT2, GPT2Config
    from hw3lib.models.packing import Packing

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=423, block_size=64, n_layer=4, n_head=4, n_embd=128, cross_attention=True)
    model = Captioner(None, GPT2(cfg), CaptionerConfig(peft="lora", lora_r=16), encoder_dim=128)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opts = {"loop": torch.optim.AdamW(trainable, lr=1e-4), "fused": torch.optim.AdamW(trainable, lr=1e-4, fused=True)}
    feats = torch.randn(32, 65, 128)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(8):
        lengths = torch.randint(4, 18, (32,), generator=g).tolist()
        batches.append(teacher_forcing_batch([torch.randint(0, 422, (n,), generator=g).tolist() for n in lengths],
                                             422, 40))

    def step(i: int, packed: bool, opt) -> float:
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        if packed:
            packing = Packing.of(y != -100)
            logits, _ = model(feats, x, need_weights=True, packing=packing)
            loss = F.cross_entropy(logits, packing.pack(y))
        else:
            logits, _ = model(feats, x, need_weights=True)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    kinds = {"padded_loop": (False, "loop"), "padded_fused": (False, "fused"), "packed_loop": (True, "loop"),
             "packed_fused": (True, "fused")}
    times = {k: [] for k in kinds}
    for i in range(steps + 3):
        for k, (packed, opt) in kinds.items():
            t = step(i, packed, opts[opt])
            if i >= 3:
                times[k].append(t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def clip_update(steps: int) -> dict[str, float]:
    """One AdamW update of every parameter of the demo CLIP (its shapes: vocabulary 49,408, width 128)."""
    import torch

    shapes = [(49408, 128), (77, 128)] + [(384, 128), (384,), (128, 128), (128,), (512, 128), (512,), (128, 512),
                                          (128,), (128,), (128,)] * 7 + [(128, 128), (3 * 128, 3, 12, 12)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("loop", {}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **kw)
        for _ in range(3):
            opt.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        out[name] = (time.perf_counter() - t0) / steps * 1e3
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    step = captioner_steps(args.steps)
    for k, v in step.items():
        print(f"captioner_step_ms_{k}: {v:.1f}")
    print(f"captioner_step_packed_vs_padded: {step['packed_loop'] / step['padded_loop']:.3f}")
    print(f"captioner_step_fused_vs_loop: {step['padded_fused'] / step['padded_loop']:.3f}")
    print(f"captioner_step_both_vs_neither: {step['packed_fused'] / step['padded_loop']:.3f}")
    clip = clip_update(max(5, args.steps // 4))
    print(f"clip_adamw_update_ms_loop: {clip['loop']:.1f}")
    print(f"clip_adamw_update_ms_fused: {clip['fused']:.1f}")
    print(f"clip_adamw_fused_vs_loop: {clip['fused'] / clip['loop']:.3f}")


if __name__ == "__main__":
    main()
