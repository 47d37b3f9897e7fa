"""Peak host memory of `hw3 zeroshot` on many small images and of CLIPScore (`hw3 evaluate`) on a batch of
large ones (#31): both should grow with the batch, not with the number or the size of the images.

Writes (once, cached under --work) N small P1-layout images and 64 large ones with references, then runs
each command in a child process and reads the child's peak RSS from the kernel.

    python bench/bench_memory.py --assets build/demo/models/assets.json
    python bench/bench_memory.py --assets ... --code /path/to/other/checkout   # the same runs with another tree

Prints `name: value` lines.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def small_images(folder: Path, n: int, side: int) -> Path:
    from PIL import Image

    if not (folder / "id2label.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (side, side), (i % 256, (i // 256) % 256, 120)).save(folder / f"{i % 10}_{i}.png")
        (folder / "id2label.json").write_text(json.dumps({str(c): f"class{c}" for c in range(10)}))
    return folder


def large_images(folder: Path, n: int, size: tuple[int, int]) -> Path:
    from PIL import Image

    if not (folder / "val.json").is_file():
        (folder / "images").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            Image.new("RGB", size, (i * 3 % 256, 40, 90)).save(folder / "images" / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png"})
            annotations.append({"id": i, "image_id": i, "caption": "a red circle"})
        (folder / "pred.json").write_text(json.dumps({str(i): "a red circle" for i in range(n)}))
        (folder / "val.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return folder


def peak_rss_mb(args: list[str], env: dict, cwd: Path) -> float:
    """Peak RSS of `hw3 ARGS` in a child process that reports its own maximum."""
    code = ("import resource, sys\ntry:  # a checkout before the layered package\n    from hw3lib.cli import main\n"
            "except ImportError:\n    from hw3lib.app.cli import main\nrc = main(sys.argv[1:])\n"
            "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"hw3 {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return int(r.stdout.split("peak_rss_kb")[-1]) / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--assets", type=Path, default=ROOT / "build" / "demo" / "models" / "assets.json")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "memory", help="where the images go")
    p.add_argument("--small", type=int, default=20_000, help="small images for hw3 zeroshot")
    p.add_argument("--code", type=Path, help="run hw3lib from this checkout instead (a before/after comparison)")
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    if args.code:
        env["PYTHONPATH"] = str(args.code)
    cwd = args.code or ROOT
    small = small_images(args.work / f"small_{args.small}", args.small, 64)
    large = large_images(args.work / "large_64", 64, (2000, 1500))
    print(f"machine: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cpus)")
    print(f"code: {args.code or ROOT}")
    zs = peak_rss_mb(["zeroshot", small, small / "id2label.json", args.work / "pred.csv", "--assets", args.assets],
                     env, cwd)
    print(f"zeroshot_{args.small}_images_64px_peak_rss_mb: {zs:.0f}")
    cs = peak_rss_mb(["evaluate", large / "pred.json", "--images", large / "images", "--annotations",
                      large / "val.json", "--assets", args.assets, "--tokenizer", "python"], env, cwd)
    print(f"clipscore_64_images_2000x1500_peak_rss_mb: {cs:.0f}")


if __name__ == "__main__":
    main()
