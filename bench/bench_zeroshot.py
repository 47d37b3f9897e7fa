"""Zero-shot throughput, and what an 80-template ensemble costs over one template on the same images.

Prints `name: value` lines. Two models: the demo world's tiny CLIP on its P1 folder, and open_clip's
ViT-B-32 architecture with random weights on the same images (real-size compute; accuracy is
meaningless there, only time counts). Each timing is a whole study: images encoded once, text
features for every template, prediction.

    python bench/bench_zeroshot.py [--data build/demo/hw3_data] [--assets build/demo/models/assets.json]
"""

import argparse
import time
from pathlib import Path

import torch

from hw3lib.core.data import read_p1_folder
from hw3lib.core.images import open_image
from hw3lib.core.manifest import ClipSpec, load_manifest
from hw3lib.models.clip import encode_images
from hw3lib.models.loading import load_clip
from hw3lib.zeroshot.classify import ensemble, text_features
from hw3lib.zeroshot.templates import PHOTO, template_set


def study_time(clip, images, names, templates) -> tuple[float, float]:
    t0 = time.perf_counter()
    feats = encode_images(clip, images)
    t_img = time.perf_counter() - t0
    w = ensemble(text_features(clip, names, templates))
    (feats @ w.T).argmax(1)
    return time.perf_counter() - t0, t_img


def bench(tag, clip, images, names):
    study_time(clip, images[:8], names, list(PHOTO))  # warm-up
    t1, t_img = study_time(clip, images, names, list(PHOTO))
    t80, _ = study_time(clip, images, names, list(template_set("openai80")))
    print(f"{tag}_images: {len(images)}")
    print(f"{tag}_images_per_s: {len(images) / t_img:.1f}")
    print(f"{tag}_study_1_template_s: {t1:.2f}")
    print(f"{tag}_study_80_templates_s: {t80:.2f}")
    print(f"{tag}_ratio_80_over_1: {t80 / t1:.3f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("build/demo/hw3_data"))
    p.add_argument("--assets", default="build/demo/models/assets.json")
    p.add_argument("--vitb32-images", type=int, default=500, help="images for the real-size ViT-B-32 run")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch_threads: {torch.get_num_threads()}")
    ds = read_p1_folder(args.data / "p1_data" / "val", args.data / "p1_data" / "id2label.json")
    images = [open_image(s.path) for s in ds.samples]  # decoded beforehand: the benchmark times the model
    bench("demo_clip", load_clip(load_manifest(args.assets).clip), images, ds.class_names)
    bench("vitb32_random", load_clip(ClipSpec("ViT-B-32", None)), images[: args.vitb32_images], ds.class_names)


if __name__ == "__main__":
    main()
