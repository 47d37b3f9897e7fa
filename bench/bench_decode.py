"""Decoding speed against transformers' `generate` on the same weights, and against this machine's floor.
Prints `name: value` lines.

  machine      CPU model and flags, fp32 GFLOP/s (2048^3 matmul), streaming read GB/s (512 MB)
  forced       batch 16, 30 new tokens (end token suppressed), GPT-2 small + cross-attention over 257
               encoder tokens, random weights: ours (KV cache, packed weights) vs recomputing the prefix
               vs GPT2LMHeadModel(add_cross_attention=True).generate; beam 3; dynamic int8
  natural      the same model with an end-token "clock" (positions push the end token's logit up, the
               image shifts when), so captions end at COCO-like lengths (mean ~10, max <= 25): ours with
               finished rows pruned vs unpruned vs generate (which stops when every row has ended)
  demo         the trained demo captioner (LoRA r=16; trained here when missing): `hw3 caption` end to
               end (process start, image reading, encoder, decoding, JSON) in fp32 and --quantize int8,
               with the CIDEr / CLIPScore change that int8 causes on the demo val set

    python bench/bench_decode.py [--batch 16] [--tokens 30] [--repeats 3] [--demo build/demo]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from hw3lib.models.captioner import Captioner, CaptionerConfig
from hw3lib.models.decoder_file import normalise_gpt2_state_dict
from hw3lib.models.decoding import Search, beam_search, greedy
from hw3lib.models.fastpath import fast_decoding
from hw3lib.models.gpt2 import GPT2, GPT2Config

EOT, S, C = 50256, 257, 768
ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


# -- the machine --------------------------------------------------------------------------------


def machine_limits() -> dict:
    flags = set()
    model = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t, _ = best_of(lambda: a @ b, 5)
    x = torch.randn(512 * 2**20 // 4)
    tr, _ = best_of(lambda: x.sum(), 5)
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return {"cpu": model, "flags": " ".join(shown) or "none", "gflops": 2 * 2048**3 / t / 1e9,
            "gbps": x.numel() * 4 / tr / 1e9}


def floor_seconds(model, B, T, lim) -> tuple[float, float, float]:
    """Lower bounds for greedy decoding of T tokens: the one-time cross keys/values (FLOP-bound), and
    per step the larger of (weight + cross K/V bytes) / bandwidth and FLOPs / peak."""
    dec = model.decoder
    L = dec.config.n_layer
    weights = sum(p.numel() for n, p in dec.named_parameters() if not n.startswith("wpe"))
    cross_params = sum(blk.crossattention.c_attn.weight.numel() for blk in dec.h)
    step_bytes = 4 * (weights - cross_params) + 4 * 2 * L * B * S * C
    step_flops = 2 * B * (weights - cross_params) + 4 * L * B * S * C
    once = 2 * B * S * cross_params / (lim["gflops"] * 1e9)
    step = max(step_bytes / (lim["gbps"] * 1e9), step_flops / (lim["gflops"] * 1e9))
    return once + T * step, step_bytes, step_flops


# -- GPT-2 small, ours and transformers', same weights -----------------------------------------------


def gpt2_pair(clock: bool):
    """(transformers model, our captioner) with identical weights; `clock` adds the end-token clock."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(HFConfig(add_cross_attention=True, attn_implementation="sdpa")).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero cross-attention output, so the image matters
        for blk in hf.transformer.h:
            blk.crossattention.c_proj.weight.normal_(0, 0.05 if clock else 0.02, generator=g)
        if clock:  # position p adds 0.1 * (p - 2) along u to the residual; the end token reads u
            u = torch.randn(C, generator=g)
            u = (u - u.mean()) / (u - u.mean()).norm()
            hf.transformer.wte.weight[EOT] += 2.0 * u
            hf.transformer.wpe.weight += 0.1 * (torch.arange(1024)[:, None] - 2.0) * u
            hf.transformer.wpe.weight[0] -= 2.0 * u  # the start token (the end token) carries no clock
    dec = GPT2(GPT2Config.small(cross_attention=True))
    dec.load_state_dict(normalise_gpt2_state_dict(hf.state_dict(), "hf"))
    model = Captioner(None, dec, CaptionerConfig(peft="none"), encoder_dim=C).eval()
    with torch.no_grad():  # identity projection: both models see the same encoder states
        model.proj.weight.copy_(torch.eye(C))
        model.proj.bias.zero_()
        for blk_ours, blk_hf in zip(dec.h, hf.transformer.h, strict=True):
            blk_ours.crossattention.c_proj.weight.copy_(blk_hf.crossattention.c_proj.weight.t())
    return hf, model


def hf_generate(hf, feats, T, forced):
    ids = torch.full((feats.shape[0], 1), EOT)
    kw = {"min_new_tokens": T} if forced else {}
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=feats, max_new_tokens=T,
                          do_sample=False, num_beams=1, use_cache=True, pad_token_id=EOT, eos_token_id=EOT, **kw)
    return [[t for t in row[1:].tolist()][: (row[1:].tolist() + [EOT]).index(EOT)] for row in out]


def forced(args, lim):
    B, T = args.batch, args.tokens
    hf, model = gpt2_pair(clock=False)
    feats = torch.randn(B, S, C, generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    with fast_decoding(model, "cpu"):  # prepared once per process, as `hw3 caption` does
        t_prep = time.perf_counter() - t0
        t_ours, out = best_of(lambda: greedy(model, feats, EOT, T, search=Search(min_len=T)), args.repeats)
        t_beam, _ = best_of(lambda: beam_search(model, feats, EOT, 3, T, search=Search(min_len=T)), args.repeats)
    t_plain_ops, _ = best_of(lambda: greedy(model, feats, EOT, T, search=Search(min_len=T)), 1)
    t_nocache, out_nc = best_of(lambda: greedy(model, feats, EOT, T, search=Search(use_cache=False, min_len=T)), 1)
    t_hf, out_hf = best_of(lambda: hf_generate(hf, feats, T, True), args.repeats)
    t0 = time.perf_counter()
    with fast_decoding(model, "cpu", "int8"):
        t_prep8 = time.perf_counter() - t0
        t_int8, out8 = best_of(lambda: greedy(model, feats, EOT, T, search=Search(min_len=T)), args.repeats)
    floor, step_bytes, step_flops = floor_seconds(model, B, T, lim)
    same8 = sum(a == b for x, y in zip(out.tokens, out8.tokens, strict=True) for a, b in zip(x, y, strict=True))
    return {
        "decode_batch": B, "decode_new_tokens": T,
        "prepare_packed_weights_s": f"{t_prep:.3f}",
        "greedy_kv_cache_s": f"{t_ours:.3f}",
        "greedy_kv_cache_unpacked_s": f"{t_plain_ops:.3f}",
        "greedy_no_cache_s": f"{t_nocache:.3f}",
        "greedy_hf_generate_s": f"{t_hf:.3f}",
        "speedup_cache_vs_no_cache": f"{t_nocache / t_ours:.2f}",
        "speedup_ours_vs_hf_generate": f"{t_hf / t_ours:.2f}",
        "speedup_ours_vs_hf_generate_incl_prepare": f"{t_hf / (t_ours + t_prep):.2f}",
        "speedup_packed_vs_unpacked": f"{t_plain_ops / t_ours:.2f}",
        "tokens_per_s_kv_cache": f"{B * T / t_ours:.1f}",
        "beam3_s": f"{t_beam:.3f}",
        "beam3_over_greedy_time": f"{t_beam / t_ours:.2f}",
        "int8_prepare_s": f"{t_prep8:.3f}",
        "greedy_int8_s": f"{t_int8:.3f}",
        "speedup_int8_vs_fp32": f"{t_ours / t_int8:.2f}",
        "int8_tokens_same_as_fp32": f"{same8 / (B * T):.3f}",
        "floor_bytes_per_step_mb": f"{step_bytes / 1e6:.0f}",
        "floor_gflop_per_step": f"{step_flops / 1e9:.2f}",
        "greedy_floor_s": f"{floor:.3f}",
        "greedy_fraction_of_floor": f"{floor / t_ours:.2f}",
        "outputs_identical_cache_vs_no_cache": out.tokens == out_nc.tokens,
        "outputs_identical_ours_vs_hf_generate": out.tokens == out_hf,
    }


def natural(args):
    B, T = args.batch, 25
    hf, model = gpt2_pair(clock=True)
    feats = torch.randn(B, S, C, generator=torch.Generator().manual_seed(3))
    with fast_decoding(model, "cpu"):
        t_ours, out = best_of(lambda: greedy(model, feats, EOT, T), args.repeats)  # the default: no pruning
        t_pruned, out_p = best_of(lambda: greedy(model, feats, EOT, T, search=Search(prune=True)), args.repeats)
        t_beam, out_b = best_of(lambda: beam_search(model, feats, EOT, 3, T), args.repeats)
        t_beam_u, out_bu = best_of(lambda: beam_search(model, feats, EOT, 3, T, search=Search(prune=False)), 1)
    t_hf, out_hf = best_of(lambda: hf_generate(hf, feats, T, False), args.repeats)
    lengths = torch.tensor([len(t) for t in out.tokens], dtype=torch.float)
    return {
        "natural_caption_tokens_mean": f"{lengths.mean():.1f}",
        "natural_caption_tokens_max": int(lengths.max()),
        "natural_greedy_s": f"{t_ours:.3f}",
        "natural_greedy_pruned_s": f"{t_pruned:.3f}",
        "natural_greedy_hf_generate_s": f"{t_hf:.3f}",
        "natural_speedup_ours_vs_hf_generate": f"{t_hf / t_ours:.2f}",
        "natural_greedy_pruning_speedup": f"{t_ours / t_pruned:.2f}",
        "natural_beam3_s": f"{t_beam:.3f}",
        "natural_beam3_over_greedy_time": f"{t_beam / t_ours:.2f}",
        "natural_beam3_pruning_speedup": f"{t_beam_u / t_beam:.2f}",
        "natural_outputs_identical_pruned_vs_unpruned": out.tokens == out_p.tokens and out_b.tokens == out_bu.tokens,
        "natural_outputs_identical_ours_vs_hf_generate": out.tokens == out_hf,
    }


# -- the trained demo captioner, end to end ----------------------------------------------------------


def demo_run(demo: Path) -> Path:
    run = ROOT / "build" / "bench" / "runs" / "lora16"
    if not any(run.glob("checkpoint-*.safetensors")):
        subprocess.run([sys.executable, "-m", "hw3lib", "train", str(ROOT / "configs" / "demo" / "lora16.toml"),
                        "--assets", str(demo / "models" / "assets.json"), "--data", str(demo / "hw3_data" / "p2_data"),
                        "--out", str(run)], check=True, env=os.environ | {"TQDM_DISABLE": "1"})
    return run


def caption_cli(demo, run, out, *extra) -> float:
    from hw3lib.core.manifest import load_manifest

    p2 = demo / "hw3_data" / "p2_data"
    decoder = load_manifest(demo / "models" / "assets.json").decoder.weights
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hw3lib", "caption", str(p2 / "images" / "val"), str(out),
                    str(decoder), "--checkpoint", str(run), "--assets",
                    str(demo / "models" / "assets.json"), "--device", "cpu", *extra],
                   check=True, capture_output=True, env=os.environ | {"TQDM_DISABLE": "1"})
    return time.perf_counter() - t0


def demo(args):
    from hw3lib.core.data import read_caption_file
    from hw3lib.core.manifest import load_manifest
    from hw3lib.metrics.captions import evaluate
    from hw3lib.models.loading import load_clip

    run = demo_run(args.demo)
    p2 = args.demo / "hw3_data" / "p2_data"
    cs = read_caption_file(p2 / "val.json", p2 / "images" / "val")
    clip = load_clip(load_manifest(args.demo / "models" / "assets.json").clip)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        scores = {}
        for name, extra in (("fp32", ()), ("int8", ("--quantize", "int8")), ("fp32_beam3", ("--beams", "3"))):
            out = Path(tmp) / f"{name}.json"
            t = caption_cli(args.demo, run, out, *extra)
            preds = json.loads(out.read_text())
            res[f"demo_hw3_caption_{name}_images_per_s"] = f"{len(preds) / t:.1f}"
            scores[name] = evaluate(preds, cs, clip, "python")
            lengths = [len(c.split()) for c in preds.values()]
            res[f"demo_caption_words_mean_{name}"] = f"{sum(lengths) / len(lengths):.1f}"
        t0 = time.perf_counter()
        evaluate({k: v[0] for k, v in cs.references().items()}, cs, clip, "python")
        res["evaluate_images_per_s_demo"] = f"{len(cs.references()) / (time.perf_counter() - t0):.1f}"
    for metric in ("CIDEr", "CLIPScore"):
        fp32, int8 = getattr(scores["fp32"], metric), getattr(scores["int8"], metric)
        res[f"demo_{metric}_fp32"] = f"{fp32:.3f}"
        res[f"demo_{metric}_int8"] = f"{int8:.3f}"
        res[f"demo_{metric}_change_int8"] = f"{int8 - fp32:+.3f}"
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo", type=Path, default=ROOT / "build" / "demo")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--only-natural", action="store_true")
    args = p.parse_args()
    lim = machine_limits()
    print(f"cpu: {lim['cpu']}")
    print(f"cpu_flags: {lim['flags']}")
    print(f"threads: {torch.get_num_threads()}")
    print(f"machine_fp32_gflops: {lim['gflops']:.0f}")
    print(f"machine_read_gbps: {lim['gbps']:.1f}")
    parts = ([] if args.only_natural else [lambda: forced(args, lim)]) + [lambda: natural(args)]
    if not args.skip_demo and (args.demo / "models" / "assets.json").is_file():
        parts.append(lambda: demo(args))
    for part in parts:
        for k, v in part().items():
            print(f"{k}: {v}", flush=True)


if __name__ == "__main__":
    main()
