"""The demo's negation-aware CLIP: the base CLIP fine-tuned on counterfactual image pairs with
`zeroshot.counterfactual`'s objective (CoN-CLIP / NegBench style).

Trainable: the text tower, the text projection and the image projection; the image trunk is frozen, so
every training image is put through it once and its pooled tokens cached (a step then costs one text-tower
pass). Images of a pair are drawn in the style of the training image they came from, and captions are
framed as in pretraining (style-coupled framings, `pretraining_text.framings_for_styles`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.images import open_image
from ..core.optimizers import adamw
from ..core.progress import progress
from ..demo.pretraining_text import FRAMINGS, frame, framings_for_styles
from ..demo.styles import STYLES, render_style
from ..demo.world import DemoWorld, boxes_for
from ..models.clip import encode_text_trimmed
from ..training.loop import cosine_lr
from ..zeroshot.counterfactual import (
    CounterfactualPair,
    PairTexts,
    counterfactual_losses,
    counterfactual_pair,
    render_pair,
)
from ..zeroshot.negation import NEGATIONS, STANDALONE


@torch.no_grad()
def trunk_features(visual, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, W) pooled image tokens before the image projection (`visual.proj`), for inputs (N, 3, H, W)."""
    proj = visual.proj
    visual.proj = None  # open_clip skips the projection when it is None
    try:
        return torch.cat([visual(x[i:i + batch]) for i in range(0, len(x), batch)])
    finally:
        visual.proj = proj


def training_pairs(train, boxes: dict, world: DemoWorld, side: int, styles: np.ndarray, preprocess, seed: int):
    """Per training image (where a pair exists): its CounterfactualPair, its style index, and the P and Q
    images as model inputs (M, 3, H, W) each, drawn in that style."""
    shapes = list(world.shapes)
    pairs, kept, p_x, q_x = [], [], [], []
    for i, im in enumerate(progress(train.images, desc="negation: counterfactual pairs", leave=False)):
        rng = np.random.default_rng([seed, 40, i])
        pair = counterfactual_pair(boxes_for(im.path.name, boxes, "train"), shapes, side, rng)
        if pair is None:
            continue
        p_img, q_img = render_pair(pair, side, [seed, 41, i])
        style = STYLES[int(styles[i])]
        p_x.append(preprocess(render_style(p_img, style, np.random.default_rng([seed, 42, i]))))
        q_x.append(preprocess(render_style(q_img, style, np.random.default_rng([seed, 42, i]))))
        pairs.append(pair)
        kept.append(int(styles[i]))
    return pairs, np.array(kept), torch.stack(p_x), torch.stack(q_x)


def _texts(pairs: list[CounterfactualPair], styles: np.ndarray, rng: np.random.Generator):
    """One step's texts: P's and Q's framed descriptions, a true and a false negation for P, and the
    standalone negations of y and of x (the arguments of counterfactual_losses)."""
    framings = framings_for_styles(rng, styles)
    p_cap, q_cap, neg, false_neg, no_y, no_x = [], [], [], [], [], []
    for pair, f in zip(pairs, framings, strict=True):
        framing = FRAMINGS[int(f)][0]
        d = frame(pair.p_captions[int(rng.integers(len(pair.p_captions)))], framing)
        p_cap.append(d)
        q_cap.append(frame(pair.q_captions[int(rng.integers(len(pair.q_captions)))], framing))
        phrasing = NEGATIONS[int(rng.integers(len(NEGATIONS)))]
        neg.append(phrasing.format(d=d, a=pair.y))
        false_neg.append(phrasing.format(d=d, a=pair.x))
        alone = STANDALONE[int(rng.integers(len(STANDALONE)))]
        no_y.append(alone.format(a=pair.y))
        no_x.append(alone.format(a=pair.x))
    return p_cap + q_cap + neg + false_neg + no_y + no_x


@dataclass(frozen=True)
class NegationTuning:
    """How the negation-aware CLIP is fine-tuned (`DemoModelSettings.negation`)."""
    steps: int  # optimiser steps
    batch: int  # counterfactual pairs per step (each: 2 images, 6 texts)
    lr: float  # AdamW peak learning rate (text tower and both projections)


def finetune_negation(bundle, train, world: DemoWorld, styles: np.ndarray, how: NegationTuning, seed: int, log: dict):
    """A copy of the CLIP fine-tuned with the counterfactual objective (6 texts per pair and step); `styles` (N,)
    are the training images' style indices. Logs each step's four losses in log["negation_loss"]."""
    steps, batch, lr = how.steps, how.batch, how.lr
    model = copy.deepcopy(bundle.model)
    side = open_image(train.images[0].path).size[0]  # every demo image has the same side
    pairs, pair_styles, p_x, q_x = training_pairs(train, world.objects("p2_data"), world, side, styles,
                                                  bundle.preprocess, seed)
    model.eval()  # no dropout in these towers; eval keeps the frozen trunk exactly as saved
    p_feat, q_feat = trunk_features(model.visual, p_x), trunk_features(model.visual, q_x)  # (M, W) each
    trainable = [p for n, p in model.named_parameters()  # the text tower and both projections
                 if (not n.startswith("visual.") or n == "visual.proj") and n != "logit_scale"]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    rng = np.random.default_rng([seed, 20])
    batch = min(batch, len(pairs))
    opt = adamw(trainable, lr, 0.1)
    scale = model.logit_scale.exp().detach()
    log["negation_pairs"] = len(pairs)
    log["negation_loss"] = []
    bar = progress(total=steps, desc="clip: negation fine-tune (counterfactual pairs)", leave=False)
    for step in range(steps):
        idx = rng.choice(len(pairs), size=batch, replace=False)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 10))
        texts = _texts([pairs[i] for i in idx], pair_styles[idx], rng)
        # the standalone negations are short: encoded apart, they are not padded to the descriptions' length
        txt = torch.cat([encode_text_trimmed(model, bundle.tokenizer(texts[:4 * batch])),
                         encode_text_trimmed(model, bundle.tokenizer(texts[4 * batch:]))]).view(6, batch, -1)  # (6, B, E)
        img = F.normalize(torch.stack([p_feat[idx], q_feat[idx]]) @ model.visual.proj, dim=-1)  # (2, B, E)
        losses = counterfactual_losses(img[0], img[1], PairTexts(*txt), scale)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()
        log["negation_loss"].append([round(v.item(), 5) for v in (losses.anchor, losses.choose_text,
                                                                  losses.choose_image, losses.distractor)])
        bar.update()
        bar.set_postfix(anchor=f"{losses.anchor.item():.3f}", negation=f"{losses.choose_text.item():.3f}", refresh=False)
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    return model
