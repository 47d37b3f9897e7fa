"""Training throughput of the demo-size captioner on the CPU: one run with every thread, one run with one
thread, and two runs at once in their own processes with one thread each (what the P2 notebook's
`train_processes = 2` does). A tiny decoder's matrices are small, so threads help it less than a second
run does. Prints `name: value` lines (optimiser steps per second, summed over the runs).

Demo sizes: GPT-2 with 4 layers, width 128, 4 heads, vocabulary 512, cross-attention and LoRA r=16;
encoder tokens (32, 65, 128) as the feature cache serves them; 24-token captions; AdamW.

    python bench/bench_train_processes.py [--steps 150]
"""

import argparse
import multiprocessing
import os
import time


def steps_per_second(steps: int, threads: int) -> float:
    import torch

    from hw3lib.models.captioner import Captioner, CaptionerConfig
    from hw3lib.models.gpt2 import GPT2, GPT2Config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128, cross_attention=True)
    model = Captioner(None, GPT2(cfg), CaptionerConfig(peft="lora", lora_r=16), encoder_dim=128)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    feats = torch.randn(32, 65, 128)
    ids = torch.randint(0, 512, (32, 24))

    def step():
        loss = torch.nn.functional.cross_entropy(model(feats, ids).flatten(0, 1), ids.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"cpu_cores: {cores}")
    print(f"one_run_all_threads_steps_per_s: {steps_per_second(args.steps, cores):.2f}")
    print(f"one_run_one_thread_steps_per_s: {steps_per_second(args.steps, 1):.2f}")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        both = pool.starmap(steps_per_second, [(args.steps, 1), (args.steps, 1)])
    print(f"two_runs_one_thread_each_steps_per_s: {sum(both):.2f}")


if __name__ == "__main__":
    main()
