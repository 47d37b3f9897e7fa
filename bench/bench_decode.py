"""Decoding speed: greedy, 30 new tokens, batch 16, a GPT-2-small-size decoder with cross-attention
(random weights) over 257 encoder tokens. Prints `name: value` lines.

  kv-cached (ours)  vs  recomputing the whole prefix every step (ours, use_cache=False)
  kv-cached (ours)  vs  transformers' GPT2LMHeadModel(add_cross_attention=True).generate, same weights
  beam 3 vs greedy (ours, cached); evaluation images/s (CIDEr + CLIPScore) on the demo world if built

    python bench/bench_decode.py [--batch 16] [--tokens 30] [--repeats 3]
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel

from hw3lib.captioner import Captioner, CaptionerConfig
from hw3lib.decode import beam_search, greedy
from hw3lib.decoder import GPT2, GPT2Config, normalise_gpt2_state_dict


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo", type=Path, default=Path("build/demo"))
    args = p.parse_args()
    torch.manual_seed(0)
    B, T, S = args.batch, args.tokens, 257
    hf = GPT2LMHeadModel(HFConfig(add_cross_attention=True, attn_implementation="sdpa")).eval()
    dec = GPT2(GPT2Config.small(cross_attention=True))
    dec.load_state_dict(normalise_gpt2_state_dict(hf.state_dict(), "hf"))
    model = Captioner(None, dec, CaptionerConfig(peft="none"), encoder_dim=768).eval()
    with torch.no_grad():  # identity projection and non-zero cross-attention: both models see the same states
        model.proj.weight.copy_(torch.eye(768))
        model.proj.bias.zero_()
        for blk_ours, blk_hf in zip(dec.h, hf.transformer.h, strict=True):
            w = torch.randn_like(blk_ours.crossattention.c_proj.weight) * 0.02
            blk_ours.crossattention.c_proj.weight.copy_(w)
            blk_hf.crossattention.c_proj.weight.copy_(w.t())
    feats = torch.randn(B, S, 768)
    eot = 50256  # suppressed until T tokens: every run makes exactly T tokens, as min_new_tokens does for HF

    t_cache, out_c = best_of(lambda: greedy(model, feats, eot, T, use_cache=True, min_len=T), args.repeats)
    t_plain, out_p = best_of(lambda: greedy(model, feats, eot, T, use_cache=False, min_len=T), 1)
    ids = torch.full((B, 1), 50256)

    def hf_generate():
        with torch.no_grad():
            return hf.generate(ids, encoder_hidden_states=feats, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                               num_beams=1, use_cache=True, pad_token_id=50256, eos_token_id=50256)

    t_hf, out_hf = best_of(hf_generate, args.repeats)
    t_beam, _ = best_of(lambda: beam_search(model, feats, eot, 3, T, min_len=T), 1)
    same_cache = out_c.tokens == out_p.tokens
    same_hf = out_c.tokens == out_hf[:, 1:].tolist()
    print(f"threads: {torch.get_num_threads()}")
    print(f"decode_batch: {B}")
    print(f"decode_new_tokens: {T}")
    print(f"greedy_kv_cache_s: {t_cache:.3f}")
    print(f"greedy_no_cache_s: {t_plain:.3f}")
    print(f"greedy_hf_generate_s: {t_hf:.3f}")
    print(f"speedup_cache_vs_no_cache: {t_plain / t_cache:.2f}")
    print(f"speedup_ours_vs_hf_generate: {t_hf / t_cache:.2f}")
    print(f"tokens_per_s_kv_cache: {B * T / t_cache:.1f}")
    print(f"beam3_over_greedy_time: {t_beam / t_cache:.2f}")
    print(f"outputs_identical_cache_vs_no_cache: {same_cache}")
    print(f"outputs_identical_ours_vs_hf_generate: {same_hf}")

    if (args.demo / "models" / "assets.json").is_file():
        from hw3lib.assets import load_clip, load_manifest
        from hw3lib.data import read_caption_file
        from hw3lib.metrics import evaluate

        m = load_manifest(args.demo / "models" / "assets.json")
        p2 = args.demo / "hw3_data" / "p2_data"
        cs = read_caption_file(p2 / "val.json", p2 / "images" / "val")
        preds = {k: v[0] for k, v in cs.references().items()}
        clip = load_clip(m.clip)
        t0 = time.perf_counter()
        evaluate(preds, cs, clip, "python")
        t_eval = time.perf_counter() - t0
        print(f"evaluate_images_per_s_demo: {len(preds) / t_eval:.1f}")


if __name__ == "__main__":
    main()
