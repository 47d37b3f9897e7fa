"""Counting: does a CLIP tell one object from two or three, and the objective that teaches it to.

CLIP is known not to count: Paiss et al. 2023 ("Teaching CLIP to Count to Ten", ICCV) measure CLIP
ViT-B/32 at 31.7% on CountBench and fix it with a counting-contrastive loss, beside the ordinary
contrastive one: each image's caption against the same caption stating another number (a hard negative),

    L_count = -log( exp(s * <i, t>) / (exp(s * <i, t>) + sum_k exp(s * <i, t_k^cf>)) ).

Here the demo world's images are free, so the counterfactuals also come on the image side: the same
scene drawn with one object removed or added (`world.fewer_objects`, `world.more_objects`, rendered from
boxes.json).

`count_zero_shot` is the CountBench-style test: which of "a picture of one shape / two shapes / three
shapes" fits an image whose object count is known (boxes.json), for any CLIP.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.results import Accuracy, CountZeroShot
from ..demo.phrasing import count_phrase
from ..metrics.stats import bootstrap_ci
from .counterfactual import choose_first

COUNT_TEMPLATE = "a picture of {count}"  # the zero-shot prompt: "a picture of two shapes"


def count_prompts(counts) -> list[str]:
    """The zero-shot prompt of each count."""
    return [COUNT_TEMPLATE.format(count=count_phrase(n)) for n in counts]


def counting_contrastive(images: torch.Tensor, texts: torch.Tensor, counterfactuals: torch.Tensor,
                         scale) -> torch.Tensor:
    """Paiss et al.'s counting loss: each image (B, E) picks its own text (B, E) over the texts that state
    another count (K, B, E); all normalised. Mean over images."""
    return choose_first(images, [texts, *counterfactuals], scale)


def count_accuracy(image_features: torch.Tensor, prompt_features: torch.Tensor, counts: np.ndarray,
                   choices: list[int], name: str = "CLIP", n_boot: int = 2000, seed: int = 0) -> CountZeroShot:
    """Image features (N, D) against one prompt per count in `choices` (C, D); `counts` (N,) the true
    counts. The prediction is the prompt of highest cosine."""
    predicted = np.asarray(choices)[(image_features @ prompt_features.T).argmax(1).cpu().numpy()]
    ok = predicted == np.asarray(counts)
    by = {str(n): float(ok[np.asarray(counts) == n].mean()) for n in choices if (np.asarray(counts) == n).any()}
    return CountZeroShot(name, len(ok), Accuracy(float(ok.mean()), bootstrap_ci(ok, n_boot=n_boot, seed=seed)), by,
                         1 / len(choices))


def count_zero_shot(clip, images, counts, name: str = "CLIP", n_boot: int = 2000, seed: int = 0,
                    device="cpu") -> CountZeroShot:
    """The CountBench-style test for one CLIP (an open_clip bundle) on images (PIL or files) whose object
    counts are known."""
    from ..models.clip import encode_images, encode_texts

    choices = list(range(1, int(max(counts)) + 1))  # every count up to the largest, as CountBench asks 2..10
    return count_accuracy(encode_images(clip, images, device=device),
                          encode_texts(clip, count_prompts(choices), device=device), np.asarray(counts), choices,
                          name, n_boot, seed)
