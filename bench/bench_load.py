"""Peak host memory of `hw3 caption` with a real-size frozen encoder, against the encoder's fp32 size.

Writes (once, cached under --work) a random-weight encoder checkpoint of the real architecture in
timm's safetensors format, a random GPT-2 small decoder in the course format and a manifest, then
runs `hw3 caption` on two images in a child process and reads the child's peak RSS from the kernel.
The target (#21) is a peak of at most 1.25x the encoder's fp32 size: one copy of the weights, not two.

    python bench/bench_load.py                                   # ViT-g/14 (7.4 GB fp32): ~8 GB of disk
    python bench/bench_load.py --model vit_base_patch16_clip_224 # quick
    python bench/bench_load.py --code /path/to/other/checkout    # the same run with another tree's hw3lib

Prints `name: value` lines.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_assets(work: Path, model: str) -> Path:
    """Random-weight encoder + decoder files and their manifest (skipped when present)."""
    import numpy as np
    import torch
    from PIL import Image

    from hw3lib.core.manifest import EncoderSpec
    from hw3lib.models.decoder_file import save_decoder
    from hw3lib.models.gpt2 import GPT2, GPT2Config
    from hw3lib.models.loading import create_encoder

    work.mkdir(parents=True, exist_ok=True)
    enc_file = work / f"{model}.safetensors"
    if not enc_file.is_file():
        from safetensors.torch import save_file

        print(f"[bench] writing a random {model} checkpoint to {enc_file} ...", flush=True)
        torch.manual_seed(0)
        enc = create_encoder(EncoderSpec(model), pretrained=False)
        tmp = enc_file.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(tmp))
        os.replace(tmp, enc_file)
        del enc
    if not (work / "decoder_model.bin").is_file():
        save_decoder(GPT2(GPT2Config.small()), work / "decoder_model.bin")
    for f in ("encoder.json", "vocab.bpe"):  # the real GPT-2 BPE files, shipped as test data
        if not (work / f).is_file():
            shutil.copy(ROOT / "tests" / "data" / "gpt2" / f, work / f)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(work / f"image_{i}.png")
    manifest = {"clip": {"model": "ViT-B-32", "pretrained": None, "config": None},
                "encoder": {"model": model, "checkpoint": enc_file.name, "hub_tag": None, "model_kwargs": {},
                            "pretrained_cfg": {}},
                "decoder": {"weights": "decoder_model.bin", "n_head": 12},
                "tokenizer": {"encoder_json": "encoder.json", "vocab_bpe": "vocab.bpe", "vocab_size": 50257}}
    (work / "assets.json").write_text(json.dumps(manifest, indent=1))
    return work / "assets.json"


def peak_rss_of(cmd: list[str], env: dict, cwd: Path) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of a child process: the only child this process starts, so the
    kernel's RUSAGE_CHILDREN maximum is its own."""
    import resource

    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vit_gigantic_patch14_clip_224", help="timm encoder architecture")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "load", help="where the files go")
    p.add_argument("--no-packed", action="store_true", help="hw3 caption --no-packed: no packed decoder copy")
    p.add_argument("--code", type=Path, help="run hw3lib from this checkout instead (a before/after comparison)")
    args = p.parse_args()
    manifest = write_assets(args.work, args.model)
    enc_bytes = (args.work / f"{args.model}.safetensors").stat().st_size
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    if args.code:
        env["PYTHONPATH"] = str(args.code)
    cmd = [sys.executable, "-m", "hw3lib", "caption", *(str(args.work / f"image_{i}.png") for i in range(2)), "-",
           str(args.work / "decoder_model.bin"), "--untrained", "--assets", str(manifest), "--device", "cpu",
           "--max-len", "8", *(["--no-packed"] if args.no_packed else [])]
    rss, seconds = peak_rss_of(cmd, env, args.code or ROOT)  # python -m imports from its folder first
    print(f"machine: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cpus)")
    print(f"encoder: {args.model}")
    print(f"code: {args.code or ROOT}")
    print(f"packed_decoder_weights: {'off' if args.no_packed else 'auto'}")
    print(f"encoder_fp32_gb: {enc_bytes / 1e9:.2f}")
    print(f"caption_peak_rss_gb: {rss / 1e9:.2f}")
    print(f"caption_peak_rss_over_encoder_fp32: {rss / enc_bytes:.2f}")
    print(f"caption_s: {seconds:.1f}")


if __name__ == "__main__":
    main()
