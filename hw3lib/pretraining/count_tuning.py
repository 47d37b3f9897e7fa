"""The demo's count-aware CLIP: the base CLIP fine-tuned to count the way Paiss et al. 2023 teach CLIP to
count ("Teaching CLIP to Count to Ten", ICCV), with the demo world's free counterfactual images beside
their counterfactual captions.

Each step takes B training scenes and renders each three ways from boxes.json, on one background: as it
is, with one object removed and with one object added (`world.fewer_objects` / `world.more_objects`;
a one-object scene has no "fewer", a three-object scene no "more"). Every render is an image of the batch
with a caption of its own scene, so two losses see the counterfactuals:

  L = L_clip + weight * L_count
  L_clip   the ordinary symmetric contrastive loss over all renders and their captions: the scene with an
           object removed or added is the hardest in-batch negative of the scene's caption, and the other
           way round;
  L_count  Paiss et al.'s counting-contrastive loss (`zeroshot.counting.counting_contrastive`): each
           render against a statement of its count ("three shapes in the picture", `phrasing.stated_count`)
           and the same statement of every other count (hard negatives). The statements list no object:
           a caption that listed three objects after "two shapes" would be refuted by the text alone.

Both towers train (the image tower must change for the caption encoder, which is this CLIP's image tower,
to carry the count), at pretraining's peak rate on a cosine of its own. The count-blind CLIP it starts
from is kept as it was: every comparison can be made on both.
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
from ..demo.phrasing import COUNT_STATEMENTS, caption_pool, stated_count
from ..demo.world import MAX_OBJECTS, DemoWorld, Obj, boxes_for, fewer_objects, more_objects, render_objects
from ..models.clip import clamp_logit_scale, encode_text_trimmed
from ..training.loop import cosine_lr
from ..zeroshot.counterfactual import in_batch_contrastive
from ..zeroshot.counting import counting_contrastive

MAX_COUNT = MAX_OBJECTS  # counterfactual scenes stay inside the world's range of counts


@dataclass(frozen=True)
class CountTuning:
    """How the count-aware CLIP is fine-tuned (`DemoModelSettings.counting`)."""
    steps: int  # optimiser steps (0: no count-aware CLIP)
    batch: int  # training scenes per step (each rendered as it is, with one object fewer and one more)
    lr: float  # AdamW peak learning rate (both towers)
    weight: float  # lambda: the counting-contrastive term's weight beside the ordinary contrastive loss


@dataclass(frozen=True)
class CountScene:
    """A training scene and its counterfactuals, as objects (`render_objects` draws each)."""
    objects: list[Obj]  # the scene as boxes.json holds it
    fewer: list[Obj] | None  # one object removed (None for a one-object scene)
    more: list[Obj] | None  # one object added (None for a full scene or where no grid square is free)

    def variants(self) -> list[list[Obj]]:
        """The scene, then each counterfactual that exists."""
        return [v for v in (self.objects, self.fewer, self.more) if v is not None]


def count_scenes(objects_per_image: list[list[Obj]], side: int, seed: int) -> list[CountScene]:
    """Each scene with one object fewer and one more (`world.fewer_objects` / `world.more_objects`)."""
    out = []
    for i, objs in enumerate(objects_per_image):
        rng = np.random.default_rng([seed, 50, i])
        fewer = fewer_objects(objs, rng) if len(objs) > 1 else None
        more = more_objects(side, objs, rng) if len(objs) < MAX_COUNT else None
        out.append(CountScene(list(objs), fewer, more))
    return out


def count_texts(objs: list[Obj], side: int, rng: np.random.Generator) -> tuple[str, list[str]]:
    """A caption of the scene (one of its phrasings) and the captions that state a count: its own first,
    then every other count from 1 to MAX_COUNT (Paiss et al.'s counterfactual captions)."""
    pool = caption_pool(objs, side, True)
    counts = [len(objs)] + [n for n in range(1, MAX_COUNT + 1) if n != len(objs)]
    framing = int(rng.integers(len(COUNT_STATEMENTS)))
    return pool[int(rng.integers(len(pool)))], [stated_count(n, framing) for n in counts]


def count_losses(model, tokenizer, images: torch.Tensor, captions: list[str], stated: list[list[str]]):
    """(L_clip, L_count) for renders (N, 3, H, W), a caption of each, and each one's count statements
    (true count first, MAX_COUNT in all)."""
    img = model.encode_image(images, normalize=True)  # (N, E)
    txt = F.normalize(encode_text_trimmed(model, tokenizer(captions)), dim=-1)  # (N, E)
    scale = model.logit_scale.exp()
    clip = in_batch_contrastive(img, txt, scale)
    # the statements are few (a framing and a count each): each is encoded once, then gathered
    flat = [t for per in stated for t in per]
    distinct = sorted(set(flat))
    row = {t: i for i, t in enumerate(distinct)}
    encoded = F.normalize(encode_text_trimmed(model, tokenizer(distinct)), dim=-1)  # (U, E)
    said = encoded[torch.tensor([row[t] for t in flat])].view(len(stated), MAX_COUNT, -1)  # (N, MAX_COUNT, E)
    count = counting_contrastive(img, said[:, 0], said[:, 1:].transpose(0, 1), scale)
    return clip, count


def finetune_counting(bundle, train, world: DemoWorld, how: CountTuning, seed: int, log: dict):
    """A copy of the CLIP fine-tuned with `count_losses` on the training scenes and their counterfactual
    renders. Logs each step's two losses in log["count_loss"]."""
    model = copy.deepcopy(bundle.model)
    boxes = world.objects("p2_data")
    objects = [boxes_for(im.path.name, boxes, "train") for im in train.images]
    side = open_image(train.images[0].path).size[0]  # every demo image has the same side
    scenes = count_scenes(objects, side, seed)
    rng = np.random.default_rng([seed, 51])
    batch = min(how.batch, len(scenes))
    opt = adamw(model.parameters(), how.lr, 0.1)
    log["count_scenes"] = len(scenes)
    log["count_loss"] = []
    model.train()
    bar = progress(total=how.steps, desc="clip: count fine-tune (counterfactual counts)", leave=False)
    for step in range(how.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, how.steps, how.lr, warmup=max(1, how.steps // 10))
        images, captions, stated = [], [], []
        for i in rng.choice(len(scenes), size=batch, replace=False).tolist():
            for objs in scenes[i].variants():  # one background for the scene and its counterfactuals
                images.append(bundle.preprocess(render_objects(np.random.default_rng([seed, 52, step, i]), side, objs)))
                caption, said = count_texts(objs, side, rng)
                captions.append(caption)
                stated.append(said)
        clip, count = count_losses(model, bundle.tokenizer, torch.stack(images), captions, stated)
        loss = clip + how.weight * count
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_logit_scale(model)
        log["count_loss"].append([round(clip.item(), 5), round(count.item(), 5)])
        bar.update()
        bar.set_postfix(contrastive=f"{clip.item():.3f}", count=f"{count.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return model
