"""`hw3 demo-models`: pretrain the demo world's small models, in the real file formats.

On the demo world's training split only, this trains and writes:
  tokenizer/encoder.json + vocab.bpe   a byte-level BPE in GPT-2's format
  clip/hw3-tiny-clip.json + open_clip_model.safetensors   a tiny open_clip CLIP (recipe below)
  clip_unstyled/, clip_negation/       the CLIP before its style phase, and its negation-aware twin
  encoder/clip_visual.safetensors      the CLIP's image tower in OpenAI-CLIP key format, which timm
                                       converts on load exactly as it does real CLIP checkpoints
  decoder/decoder_model.bin            a tiny GPT-2 LM on the captions, in the course format
  assets.json                          the manifest naming all of them
  metrics.json                         training curves, CLIP recall@1 (val), shape and colour
                                       zero-shot accuracy on single-object scenes, decoder perplexity

The CLIP recipe. Contrastive training alone, within a CPU budget, learns colour and not shape (11% on
10 shapes). Two signals from the world's own boxes fix that:
  1. a vision-only warm start: each object's patch tokens, mean-pooled over its box, must name its
     shape and colour (a linear head per attribute, dropped afterwards): a clean label per object;
  2. then contrastive training in which every caption also meets a copy of itself with each shape word
     swapped for another shape (a negative that differs only in shape), with the object loss kept on.
Both run on the world's renders with framings drawn independently of the image (the old design, saved as
clip_unstyled/ for the P1 ablation). Then
  3. a style phase: the same losses on the training images drawn in render styles (`demo.styles`), each
     caption framed as alt-text frames its image's look ("a sketch of ..." under sketches) most of the
     time. Styled images from the start cost shape (measured on held-out single-object scenes: 29% with
     half the images styled, 61% with a fifth, 91% with none), so they come last, at a lower rate.
The negation-aware CLIP is then fine-tuned from it on counterfactual pairs (`negation_tuning`).

Deterministic for a seed; skipped when `assets.json` and a fingerprint of data + settings match.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.data import read_caption_file
from ..core.distributed import worker_pool
from ..core.errors import HW3Error
from ..core.files import (
    atomic_write_json,
    atomic_write_text,
    output_lock,
    require_dir,
    staged_folder,
)
from ..core.images import open_image
from ..core.manifest import ClipSpec, DecoderSpec, EncoderSpec, Manifest, TokenizerSpec
from ..core.optimizers import adamw
from ..core.patches import PatchGrid
from ..core.progress import progress
from ..core.tokenizer import load_gpt2_tokenizer, teacher_forcing_batch, train_bpe
from ..core.weights import save_safetensors
from ..demo.models_record import COUNTING_MANIFEST, NEGATION_MANIFEST, UNSTYLED_MANIFEST, DemoMetrics
from ..demo.phrasing import SINGLE_OBJECT
from ..demo.pretraining_text import FRAMINGS, PretrainingText, draw_framings, frame, framings_for_styles
from ..demo.styles import PRETRAINING_MIX, STYLES, draw_styles, render_style
from ..demo.world import DemoWorld, boxes_for
from ..models.clip import clamp_logit_scale, encode_text_trimmed
from ..models.decoder_file import save_decoder
from ..models.gpt2 import GPT2, GPT2Config
from ..models.loading import load_clip
from ..training.loop import cosine_lr
from ..zeroshot.negation import recall_hits
from .count_tuning import CountTuning, finetune_counting
from .negation_tuning import NegationTuning, finetune_negation

CLIP_NAME = "hw3-tiny-clip"
# the code that shapes the models: a change to any of these files rebuilds them (no version to bump by hand)
SHAPED_BY = ("hw3lib.pretraining.demo_models", "hw3lib.pretraining.negation_tuning", "hw3lib.pretraining.count_tuning",
             "hw3lib.zeroshot.counting", "hw3lib.demo.pretraining_text",
             "hw3lib.demo.styles", "hw3lib.demo.world", "hw3lib.demo.phrasing", "hw3lib.zeroshot.counterfactual", "hw3lib.zeroshot.negation",
             "hw3lib.core.tokenizer", "hw3lib.core.patches", "hw3lib.models.clip", "hw3lib.models.decoder_file", "hw3lib.models.gpt2",
             "hw3lib.models.loading", "hw3lib.models.packing", "hw3lib.training.loop", "hw3lib.core.optimizers")


@dataclass
class DemoModelSettings:
    image_size: int = 96  # CLIP / encoder input side (the demo images' side)
    patch_size: int = 12  # ViT patch side -> (96/12)^2 = 64 patches + CLS; the demo world's grid cell
    vision_width: int = 128  # ViT width
    vision_layers: int = 4  # ViT depth
    head_width: int = 32  # ViT / text head width -> 4 heads
    text_width: int = 128  # CLIP text transformer width
    text_layers: int = 3  # CLIP text transformer depth
    context_length: int = 32  # CLIP text tokens
    embed_dim: int = 128  # joint CLIP embedding
    clip_object_steps: int = 150  # vision-only warm start: objects name their shape and colour
    clip_steps: int = 220  # contrastive steps after it (with shape-swapped negatives + the object loss)
    clip_batch: int = 96  # images per step
    clip_style_steps: int = 120  # then steps on styled images with style-coupled framings (0: the old design)
    clip_style_lr: float = 5e-4  # their AdamW peak learning rate (a cosine of its own)
    clip_lr: float = 1e-3  # AdamW peak learning rate (one cosine schedule over both phases)
    negation_steps: int = 300  # fine-tune of the negation-aware CLIP on counterfactual pairs (negation_tuning)
    negation_batch: int = 48  # counterfactual pairs per negation step (each: 2 images, 6 texts)
    negation_lr: float = 2e-3  # its AdamW peak learning rate (text tower and both projections)
    count_steps: int = 150  # fine-tune of the count-aware CLIP on counterfactual counts (count_tuning; 0: none)
    count_batch: int = 32  # training scenes per count step (each also rendered with one object fewer and more)
    count_lr: float = 1e-3  # its AdamW peak learning rate (both towers; pretraining's peak)
    count_weight: float = 1.0  # lambda of the counting-contrastive term beside the ordinary contrastive loss
    probe_images: int = 500  # held-out single-object scenes for the shape / colour zero-shot check
    bpe_vocab: int = 512  # BPE tokens including <|endoftext|>
    gpt_layers: int = 4  # GPT-2 depth
    gpt_heads: int = 4  # GPT-2 heads
    gpt_width: int = 128  # GPT-2 width
    gpt_block: int = 64  # GPT-2 positions
    gpt_epochs: int = 2  # LM training epochs
    gpt_batch: int = 128  # LM batch
    gpt_lr: float = 2e-3  # AdamW peak learning rate

    def negation(self) -> NegationTuning:
        return NegationTuning(self.negation_steps, self.negation_batch, self.negation_lr)

    def counting(self) -> CountTuning:
        return CountTuning(self.count_steps, self.count_batch, self.count_lr, self.count_weight)

    @classmethod
    def for_size(cls, size: str) -> DemoModelSettings:
        if size == "small":
            return cls(clip_object_steps=6, clip_steps=10, clip_batch=32, probe_images=40, gpt_epochs=2,
                       vision_layers=2, text_layers=2, gpt_layers=2, negation_steps=6, negation_batch=32,
                       clip_style_steps=4, count_steps=4, count_batch=8)
        if size == "full":
            return cls()
        raise HW3Error(f"unknown demo-models size {size!r} (choose small or full)")


def clip_config(s: DemoModelSettings, vocab_size: int = 49408) -> dict:
    """open_clip model config of the tiny CLIP (registered under CLIP_NAME)."""
    return {
        "embed_dim": s.embed_dim,
        "vision_cfg": {"image_size": s.image_size, "layers": s.vision_layers, "width": s.vision_width,
                       "patch_size": s.patch_size, "head_width": s.head_width},
        "text_cfg": {"context_length": s.context_length, "vocab_size": vocab_size, "width": s.text_width,
                     "heads": s.text_width // s.head_width, "layers": s.text_layers},
    }


def encoder_spec(s: DemoModelSettings, checkpoint: str) -> EncoderSpec:
    """The caption encoder as timm builds it: a CLIP ViT whose shape matches the tiny CLIP's tower."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return EncoderSpec(
        model="vit_base_patch32_clip_224",
        checkpoint=checkpoint,
        model_kwargs={"img_size": s.image_size, "patch_size": s.patch_size, "embed_dim": s.vision_width,
                      "depth": s.vision_layers, "num_heads": s.vision_width // s.head_width,
                      "num_classes": s.embed_dim},
        pretrained_cfg={"input_size": [3, s.image_size, s.image_size], "mean": list(OPENAI_DATASET_MEAN),
                        "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic", "crop_pct": 1.0,
                        "num_classes": s.embed_dim},
    )


# ----------------------------------------------------------------------------------------------
# helpers


def _fingerprint(data_dir: Path, size: str, seed: int, s: DemoModelSettings) -> str:
    """What the models are a function of: the world's files, the settings and the code (`SHAPED_BY`)."""
    import importlib

    h = hashlib.sha256()
    for f in ("p2_data/train.json", "p2_data/val.json", "p2_data/boxes.json", "DEMO.json"):
        h.update(hashlib.sha256((data_dir / f).read_bytes()).digest())
    h.update(json.dumps({"size": size, "seed": seed, "settings": asdict(s)}, sort_keys=True).encode())
    for name in SHAPED_BY:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


def _load_split_tensors(split, preprocess, desc) -> torch.Tensor:
    return torch.stack([preprocess(open_image(im.path)) for im in progress(split.images, desc=desc, leave=False)])


def styled_training_images(images: list, preprocess, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """The CLIP's styled pretraining images: each of the training images (PIL) drawn in a style (STYLES,
    with the shares PRETRAINING_MIX), as model inputs (N, 3, H, W), and the style indices (N,)."""
    styles = draw_styles(np.random.default_rng([seed, 30]), len(images), PRETRAINING_MIX)
    x = torch.stack([preprocess(render_style(im, STYLES[int(k)], np.random.default_rng([seed, 31, i])))
                     for i, (im, k) in enumerate(progress(list(zip(images, styles, strict=True)),
                                                          desc="clip: styling train images", leave=False))])
    return x, styles


# ----------------------------------------------------------------------------------------------
# CLIP


def object_targets(split, boxes: dict, split_name: str, grid: PatchGrid, shapes: list[str], colors: list[str]):
    """Per image, up to K objects as patch-pooling weights (N, K, patches) summing to 1 over the patches
    each object covers (`PatchGrid.covered`), and shape / colour labels (N, K), -100 where no object."""
    n_max = max(len(boxes_for(im.path.name, boxes, split_name)) for im in split.images)
    weights = torch.zeros(len(split.images), n_max, grid.patches)
    shape_y = torch.full((len(split.images), n_max), -100)
    color_y = torch.full((len(split.images), n_max), -100)
    side = open_image(split.images[0].path).size[0]  # every demo image has the same side
    for i, im in enumerate(split.images):
        for k, o in enumerate(boxes_for(im.path.name, boxes, split_name)):
            inside = grid.covered(o.box, (side, side))
            if inside.any():
                weights[i, k] = torch.from_numpy(inside / inside.sum()).float()
                shape_y[i, k], color_y[i, k] = shapes.index(o.shape), colors.index(o.color)
    return weights, shape_y, color_y


def shape_swapper(shapes: list[str], rng: np.random.Generator):
    """caption -> the same caption with every shape word replaced by another, random shape."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, shapes)) + r")\b")

    def other(m):
        return shapes[(shapes.index(m.group(1)) + 1 + int(rng.integers(len(shapes) - 1))) % len(shapes)]

    return lambda caption: pattern.sub(other, caption)


@dataclass
class ClipImages:
    """The CLIP's training images as model inputs: the world's renders and the same images styled."""
    plain: torch.Tensor  # (N, 3, H, W) the renders (the world's photos)
    styled: torch.Tensor  # (N, 3, H, W) each drawn in its style
    styles: np.ndarray  # (N,) each image's style index (STYLES)


@dataclass
class _ClipStep:
    """What every step of `train_clip` reads."""
    model: object  # the open_clip model
    tokenizer: object
    heads: torch.nn.ModuleDict  # shape / colour classifiers of each object's mean token
    pool: torch.Tensor  # (N, K, patches) each object's patch-pooling weights
    shape_y: torch.Tensor  # (N, K) labels, -100 where no object
    color_y: torch.Tensor
    caps: list[list[str]]  # each training image's captions
    swap: object  # caption -> the caption with every shape word swapped


def _object_loss(c: _ClipStep, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Each object's mean patch token (B, K, W) names its shape and colour."""
    objects = torch.einsum("bkp,bpw->bkw", c.pool[idx], tokens)
    return (F.cross_entropy(c.heads["shape"](objects).flatten(0, 1), c.shape_y[idx].flatten(), ignore_index=-100)
            + F.cross_entropy(c.heads["color"](objects).flatten(0, 1), c.color_y[idx].flatten(), ignore_index=-100))


def _contrastive_loss(c: _ClipStep, pooled: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Images (B, E) against their captions, with each caption's shape swap as a hard negative."""
    img = F.normalize(pooled, dim=-1)
    txt = encode_text_trimmed(c.model, c.tokenizer(texts + [c.swap(t) for t in texts]))  # (2B, E), exact
    logits = c.model.logit_scale.exp() * img @ txt.T  # (B, 2B): captions, then their shape swaps
    target = torch.arange(len(texts))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :len(texts)].T, target)) / 2


def _captions_for(c: _ClipStep, idx, shown, styled: bool, rng, text: PretrainingText) -> list[str]:
    """One caption per image, framed (by its style in the style phase, independently before), recorded."""
    descriptions = [c.caps[i][int(rng.integers(len(c.caps[i])))] for i in idx.tolist()]
    framings = framings_for_styles(rng, shown) if styled else draw_framings(rng, len(descriptions))
    texts = [frame(d, FRAMINGS[f][0]) for d, f in zip(descriptions, framings, strict=True)]
    for t, f, st in zip(texts, framings, shown, strict=True):
        text.add(t, int(f), int(st))
    return texts


def train_clip(bundle, images: ClipImages, train, world: DemoWorld, s: DemoModelSettings, seed: int,
               log: dict) -> tuple[PretrainingText, dict | None]:
    """The recipe of the module docstring: on the renders, with framings drawn independently of the image
    (the old design), then `s.clip_style_steps` more on the styled images with framings that go with each
    image's style (`framings_for_styles`). Returns the record of the text it read and the weights as they
    were before the style phase (the old design, kept as an ablation; None without a style phase)."""
    model = bundle.model
    shapes, colors = list(world.shapes), list(world.colors)
    grid = PatchGrid(s.image_size // s.patch_size, s.image_size // s.patch_size)  # the ViT being trained
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(s.vision_width, len(shapes)),
                                 "color": torch.nn.Linear(s.vision_width, len(colors))})
    rng = np.random.default_rng(seed)
    c = _ClipStep(model, bundle.tokenizer, heads,
                  *object_targets(train, world.objects("p2_data"), "train", grid, shapes, colors),
                  [train.captions[im.id] for im in train.images], shape_swapper(shapes, rng))
    text, before_styles = PretrainingText.start(), None
    batch, base = min(s.clip_batch, len(train.images)), s.clip_object_steps + s.clip_steps
    photo = np.full(len(train.images), STYLES.index("photo"))  # the renders are the world's photos
    opt = adamw([*model.parameters(), *heads.parameters()], s.clip_lr, 0.1)
    model.train()
    model.visual.output_tokens = True  # (pooled, patch tokens after ln_post)
    log["clip_loss"], log["clip_object_loss"] = [], []
    bar = progress(total=base + s.clip_style_steps, desc="clip: objects, contrastive, then styles", leave=False)
    for step in range(base + s.clip_style_steps):
        styled = step >= base
        if step == base:
            before_styles = {k: v.detach().clone() for k, v in model.state_dict().items()}
        idx = torch.from_numpy(rng.choice(len(train.images), size=batch, replace=False))
        for g in opt.param_groups:
            g["lr"] = (cosine_lr(step - base, s.clip_style_steps, s.clip_style_lr, warmup=max(1, s.clip_style_steps // 10))
                       if styled else cosine_lr(step, base, s.clip_lr, warmup=max(1, base // 20)))
        # fp32: on this CPU bf16 autocast is ~15x slower than fp32 for models this small
        pooled, tokens = model.visual((images.styled if styled else images.plain)[idx])  # (B, E), (B, P, W)
        loss = obj_loss = _object_loss(c, tokens, idx)
        if step >= s.clip_object_steps:
            texts = _captions_for(c, idx, (images.styles if styled else photo)[idx.numpy()], styled, rng, text)
            contrastive = _contrastive_loss(c, pooled, texts)
            loss = loss + contrastive
            log["clip_loss"].append(round(contrastive.item(), 5))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_logit_scale(model)
        log["clip_object_loss"].append(round(obj_loss.item(), 5))
        bar.update()
        bar.set_postfix(objects=f"{obj_loss.item():.3f}", contrastive=log["clip_loss"][-1] if log["clip_loss"] else "-",
                        refresh=False)
    bar.close()
    model.visual.output_tokens = False
    model.eval()
    return text, before_styles


@torch.no_grad()
def clip_recall_at_1(bundle, split) -> float:
    """Image->text recall@1 over the split's pairs: each image against the first caption of every image."""
    x = _load_split_tensors(split, bundle.preprocess, "clip: loading val images")
    texts = [split.captions[im.id][0] for im in split.images]
    img = bundle.model.encode_image(x, normalize=True)
    txt = bundle.model.encode_text(bundle.tokenizer(texts), normalize=True)
    return float(recall_hits(img, txt).mean())


@torch.no_grad()
def attribute_zero_shot(bundle, images, shape_labels, color_labels, shapes: list[str], colors: list[str]) -> dict:
    """Zero-shot shape and colour accuracy. Each class's text embedding averages the caption phrase
    "a single {colour} {shape}" (`phrasing.SINGLE_OBJECT`, one of the captions' phrasings) over the other attribute (the shape
    "circle" is every colour of circle)."""
    from ..models.clip import encode_images
    from ..zeroshot.classify import ensemble, text_features

    feats = encode_images(bundle, images)  # (N, D)
    per = text_features(bundle, [f"{c} {sh}" for c in colors for sh in shapes], [SINGLE_OBJECT])[0]
    per = per.view(len(colors), len(shapes), -1)  # (colours, shapes, D)
    out = {"n": len(images), "template": f"{SINGLE_OBJECT.format(object='{colour} {shape}')}, averaged over the other "
                                         "attribute"}
    for name, weights, labels in (("shape", ensemble(per), shape_labels), ("color", ensemble(per.transpose(0, 1)), color_labels)):
        out[f"{name}_accuracy"] = float(((feats @ weights.T).argmax(1).numpy() == np.asarray(labels)).mean())
    return out


def single_object_probe(s: DemoModelSettings, side: int, seed: int, shapes, colors):
    """Held-out single-object scenes drawn like P2's val images (their own seed stream, never written)."""
    from ..demo.world import draw_scene

    images, ys, yc = [], [], []
    for i in range(s.probe_images):
        im, (obj,) = draw_scene(np.random.default_rng([seed, 9, i]), side, 1)
        images.append(im)
        ys.append(shapes.index(obj.shape))
        yc.append(colors.index(obj.color))
    return images, ys, yc


def clip_visual_state_dict(clip_model) -> dict[str, torch.Tensor]:
    """The image tower's tensors under OpenAI CLIP keys (`visual.conv1.weight`, ...)."""
    return {k: v.detach().clone().contiguous() for k, v in clip_model.state_dict().items() if k.startswith("visual.")}


def clip_attribute_checks(bundle, val, boxes: dict, world: DemoWorld, s: DemoModelSettings, seed: int) -> dict:
    """Shape and colour zero-shot on single-object images: the val split's own, and a larger held-out
    probe drawn the same way."""
    shapes, colors = list(world.shapes), list(world.colors)
    singles = [(im, objs[0]) for im in val.images if len(objs := boxes_for(im.path.name, boxes, "val")) == 1]
    side = open_image(val.images[0].path).size[0]
    out = {"probe": attribute_zero_shot(bundle, *single_object_probe(s, side, seed, shapes, colors), shapes, colors)}
    if singles:
        out["val_single_object"] = attribute_zero_shot(
            bundle, [open_image(im.path) for im, _ in singles], [shapes.index(o.shape) for _, o in singles],
            [colors.index(o.color) for _, o in singles], shapes, colors)
    return out


# ----------------------------------------------------------------------------------------------
# GPT-2 language model


def train_gpt(tok, train_caps, val_caps, s: DemoModelSettings, seed: int, log: dict) -> tuple[GPT2, float]:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=tok.vocab_size, block_size=s.gpt_block, n_layer=s.gpt_layers,
                     n_head=s.gpt_heads, n_embd=s.gpt_width)
    model = GPT2(cfg)
    x, y = teacher_forcing_batch(tok.encode_batch(train_caps), tok.eot_id, s.gpt_block)
    rng = np.random.default_rng(seed + 1)
    batch = min(s.gpt_batch, len(x))
    steps_per_epoch = len(x) // batch
    total = steps_per_epoch * s.gpt_epochs
    opt = adamw(model.parameters(), s.gpt_lr, 0.01)
    log["gpt_loss"] = []
    bar = progress(total=total, desc="gpt2: language-model training", leave=False)
    step = 0
    model.train()
    for _ in range(s.gpt_epochs):
        order = rng.permutation(len(x))
        for b in range(steps_per_epoch):
            idx = torch.from_numpy(order[b * batch:(b + 1) * batch])
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, s.gpt_lr, warmup=max(1, total // 20))
            logits = model(x[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            log["gpt_loss"].append(round(loss.item(), 5))
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return model, perplexity(model, tok, val_caps, s.gpt_block)


@torch.no_grad()
def perplexity(model: GPT2, tok, captions: list[str], block: int) -> float:
    """exp(mean next-token NLL) over the captions, end token included (fp32)."""
    x, y = teacher_forcing_batch(tok.encode_batch(captions), tok.eot_id, block)
    nll, count = 0.0, 0
    for i in range(0, len(x), 256):
        logits = model(x[i:i + 256])
        nll += F.cross_entropy(logits.flatten(0, 1), y[i:i + 256].flatten(), ignore_index=-100,
                               reduction="sum").item()
        count += int((y[i:i + 256] != -100).sum())
    return math.exp(nll / count)


def save_open_clip(model, clip_dir: Path, config: dict) -> None:
    """An open_clip model folder: the model config JSON and open_clip_model.safetensors (the whole CLIP)."""
    clip_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(clip_dir / f"{CLIP_NAME}.json", config)
    save_safetensors(model.state_dict(), clip_dir / "open_clip_model.safetensors")


def save_encoder(model, folder: Path) -> None:
    """FOLDER/clip_visual.safetensors: the image tower alone, which timm reads through its CLIP checkpoint
    filter as the caption encoder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(clip_visual_state_dict(model), folder / "clip_visual.safetensors")


# ----------------------------------------------------------------------------------------------
# the whole step


def build_demo_models(data_dir, out_dir, size: str = "full", seed: int = 0, force: bool = False) -> Path:
    """Train the demo world's models into `out_dir` (cached by a fingerprint of their inputs). The models are
    written into a folder beside it and swapped in whole (`staged_folder`): an interrupted or failed build
    leaves the folder as it was; a second writer of the same folder refuses (`output_lock`). Returns the
    assets manifest."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    with output_lock(out_dir, "hw3 demo-models"):
        p2 = require_dir(data_dir / "p2_data", "p2_data folder")
        world = DemoWorld.load(data_dir)
        if world is None or not world.objects("p2_data"):
            raise HW3Error(f"{data_dir}: not a demo world (no DEMO.json and p2_data/boxes.json); demo-models trains "
                           "on a world that hw3 demo-data wrote")
        s = DemoModelSettings.for_size(size)
        fp = _fingerprint(data_dir, size, seed, s)
        stamp = out_dir / "fingerprint.txt"
        if not force and (out_dir / "assets.json").is_file() and stamp.is_file() and stamp.read_text().strip() == fp:
            damage = check_contents(out_dir)
            if damage is None:
                print(f"demo models up to date in {out_dir} (cached; every file as recorded)")
                return out_dir / "assets.json"
            print(f"demo models in {out_dir}: {damage}: building them again", flush=True)
        with staged_folder(out_dir) as staging:
            _build(p2, world, staging, s, size, seed)
            atomic_write_json(staging / CONTENTS, record_contents(staging))
            atomic_write_text(staging / "fingerprint.txt", fp + "\n")
        return out_dir / "assets.json"


CONTENTS = "contents.json"  # every file the models folder holds: relative path -> size and sha256


def record_contents(folder: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `folder` (but the record and the stamp)."""
    from ..training.feature_cache import file_digest

    return {name: {"size": p.stat().st_size, "sha256": file_digest(p)} for name, p in _model_files(folder).items()}


def _model_files(folder: Path) -> dict[str, Path]:
    """Every file under `folder` by its relative path, but the record of them and the stamp."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (CONTENTS, "fingerprint.txt")}


def check_contents(folder: Path) -> str | None:
    """What differs between the models folder and its record (None when every file is as recorded): a
    file cut short, changed, missing or added is never reused as "up to date"."""
    from ..core.files import read_json

    record = folder / CONTENTS
    if not record.is_file():
        return f"no record of its files ({CONTENTS})"
    try:
        recorded = read_json(record)
    except HW3Error as e:
        return str(e)
    if not isinstance(recorded, dict):
        return f"{record}: not a record of files"
    sizes = {name: p.stat().st_size for name, p in _model_files(folder).items()}
    for name in sorted(set(recorded) | set(sizes)):
        want = recorded.get(name)
        if name not in sizes or not isinstance(want, dict):
            return f"{name} is {'missing' if name not in sizes else 'not in the record'}"
        if sizes[name] != want.get("size"):
            return f"{name} has {sizes[name]} bytes, recorded {want.get('size')}"
    now = record_contents(folder)
    changed = [name for name in sorted(now) if now[name]["sha256"] != recorded[name].get("sha256")]
    return f"{changed[0]} differs from its recorded sha256" if changed else None


def _build_clips(out_dir: Path, train, val, world: DemoWorld, s: DemoModelSettings, seed: int, log: dict):
    """The tiny CLIP (clip/), its image tower as the encoder (encoder/) and the CLIP before its style phase
    (clip_unstyled/); (the weights before the style phase, recall@1 on val, each training image's style)."""
    clip_dir = out_dir / "clip"
    clip_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = clip_dir / f"{CLIP_NAME}.json"
    atomic_write_json(cfg_path, clip_config(s))
    torch.manual_seed(seed)
    bundle = load_clip(ClipSpec(CLIP_NAME, None, str(cfg_path)))
    loaded = [open_image(im.path) for im in progress(train.images, desc="clip: loading train images", leave=False)]
    plain = torch.stack([bundle.preprocess(im) for im in loaded])  # (N, 3, H, W)
    images = ClipImages(plain, *styled_training_images(loaded, bundle.preprocess, seed))  # styled (N, 3, H, W), (N,)
    del loaded
    text, before_styles = train_clip(bundle, images, train, world, s, seed, log)
    styles = images.styles
    del images  # the image tensors (the negation fine-tune renders its own pairs)
    recall = clip_recall_at_1(bundle, val)
    log["clip_text"] = text.to_json()
    if before_styles is not None:  # the old design (no styled images, framings independent of them): an ablation
        old = copy.deepcopy(bundle.model)
        old.load_state_dict(before_styles)
        save_open_clip(old, out_dir / "clip_unstyled", clip_config(s))
        log["unstyled_clip_recall_at_1_val"] = round(clip_recall_at_1(replace(bundle, model=old), val), 4)
    log["clip_zero_shot"] = clip_attribute_checks(bundle, val, world.objects("p2_data"), world, s, seed)
    save_open_clip(bundle.model, clip_dir, clip_config(s))
    save_encoder(bundle.model, out_dir / "encoder")
    return before_styles, recall, styles


@dataclass(frozen=True)
class _Stage:
    """What each job after the base CLIP reads: the models folder being built and the world's p2_data/."""
    out_dir: Path
    p2: Path
    settings: DemoModelSettings
    seed: int


def _after_base(kind: str, st: _Stage, styles: np.ndarray) -> tuple[dict, float | None]:
    """One job after the base CLIP, in a process of its own: the negation-aware CLIP (clip_negation/), the
    count-aware CLIP and its image tower (clip_counting/, encoder_counting/) or the GPT-2 language model
    (decoder/). Returns its log entries (and the decoder's val perplexity)."""
    s, seed, out_dir, log = st.settings, st.seed, st.out_dir, {}
    train = read_caption_file(st.p2 / "train.json", st.p2 / "images" / "train")
    val = read_caption_file(st.p2 / "val.json", st.p2 / "images" / "val")
    if kind == "gpt":
        tok = load_gpt2_tokenizer(out_dir / "tokenizer" / "encoder.json", out_dir / "tokenizer" / "vocab.bpe")
        gpt, ppl = train_gpt(tok, [c for _, c in train.pairs()], [c for _, c in val.pairs()], s, seed, log)
        save_decoder(gpt, out_dir / "decoder" / "decoder_model.bin")
        return log, ppl
    world = DemoWorld.load(st.p2.parent)
    bundle = load_clip(ClipSpec(CLIP_NAME, str(out_dir / "clip" / "open_clip_model.safetensors"),
                                str(out_dir / "clip" / f"{CLIP_NAME}.json")))
    if kind == "negation":
        tuned = finetune_negation(bundle, train, world, styles, s.negation(), seed, log)
        save_open_clip(tuned, out_dir / "clip_negation", clip_config(s))
        log["negation_clip_recall_at_1_val"] = round(clip_recall_at_1(replace(bundle, model=tuned), val), 4)
        return log, None
    counted = replace(bundle, model=finetune_counting(bundle, train, world, s.counting(), seed, log))
    save_open_clip(counted.model, out_dir / "clip_counting", clip_config(s))
    save_encoder(counted.model, out_dir / "encoder_counting")
    log["counting_clip_recall_at_1_val"] = round(clip_recall_at_1(counted, val), 4)
    log["counting_clip_zero_shot"] = clip_attribute_checks(counted, val, world.objects("p2_data"), world, s, seed)
    return log, None


def _after_base_jobs(st: _Stage, styles: np.ndarray, log: dict) -> float:
    """The jobs that need only the base CLIP (or nothing of it), two at a time in processes of their own,
    each on half the threads: these tiny models keep two cores busier side by side than one job on both.
    Their log entries join `log` in a fixed order; returns the decoder's val perplexity."""
    kinds = ["counting"] * (st.settings.count_steps > 0) + ["negation", "gpt"]  # the longest first
    threads = max(1, torch.get_num_threads() // 2)
    print(f"demo models: {', '.join(kinds)} fine-tunes, two at a time ({threads} thread(s) each)", flush=True)
    with worker_pool(2, threads) as pool:
        done = {k: pool.submit(_after_base, k, st, styles) for k in kinds}
        results = {k: f.result() for k, f in done.items()}
    for k in ("negation", "counting", "gpt"):  # the order the entries had when the jobs ran one after another
        log |= results[k][0] if k in results else {}
    return results["gpt"][1]


def _build(p2: Path, world: DemoWorld, out_dir: Path, s: DemoModelSettings, size: str, seed: int) -> None:
    manifest_path = out_dir / "assets.json"
    t0 = time.time()
    torch.manual_seed(seed)
    train = read_caption_file(p2 / "train.json", p2 / "images" / "train")
    val = read_caption_file(p2 / "val.json", p2 / "images" / "val")
    train_caps = [c for _, c in train.pairs()]
    log: dict = {"size": size, "seed": seed, "settings": asdict(s)}

    # (a) tokenizer
    tok = train_bpe(train_caps, s.bpe_vocab)
    tok.save(out_dir / "tokenizer")

    # (b) tiny CLIP, on the framed pretraining text; then (c) its negation-aware and count-aware twins and the
    # tiny GPT-2 LM, side by side
    before_styles, recall, styles = _build_clips(out_dir, train, val, world, s, seed, log)
    ppl = _after_base_jobs(_Stage(out_dir, p2, s, seed), styles, log)

    manifest = Manifest(
        clip=ClipSpec(CLIP_NAME, "clip/open_clip_model.safetensors", f"clip/{CLIP_NAME}.json"),
        encoder=encoder_spec(s, "encoder/clip_visual.safetensors"),
        decoder=DecoderSpec("decoder/decoder_model.bin", n_head=s.gpt_heads),
        tokenizer=TokenizerSpec("tokenizer/encoder.json", "tokenizer/vocab.bpe", tok.vocab_size),
    )
    log["clip_recall_at_1_val"] = round(recall, 4)
    log["clip_recall_chance"] = round(1 / len(val.images), 4)
    log["decoder_perplexity_val"] = round(ppl, 3)
    log["decoder_vocab_size"] = tok.vocab_size
    log["seconds"] = round(time.time() - t0, 1)
    DemoMetrics.from_json(log, "metrics.json")  # the record the summary reads: refused here, by field, if it would not fit
    atomic_write_json(out_dir / "metrics.json", log)
    Manifest(clip=ClipSpec(CLIP_NAME, "clip_negation/open_clip_model.safetensors", f"clip_negation/{CLIP_NAME}.json"),
             encoder=None, decoder=None, tokenizer=None).save(out_dir / NEGATION_MANIFEST)
    if s.count_steps > 0:  # the whole captioner's manifest, on the count-aware CLIP and its image tower
        replace(manifest, clip=ClipSpec(CLIP_NAME, "clip_counting/open_clip_model.safetensors",
                                        f"clip_counting/{CLIP_NAME}.json"),
                encoder=encoder_spec(s, "encoder_counting/clip_visual.safetensors")).save(out_dir / COUNTING_MANIFEST)
    if before_styles is not None:
        Manifest(clip=ClipSpec(CLIP_NAME, "clip_unstyled/open_clip_model.safetensors", f"clip_unstyled/{CLIP_NAME}.json"),
                 encoder=None, decoder=None, tokenizer=None).save(out_dir / UNSTYLED_MANIFEST)
    manifest.save(manifest_path)
    z = log["clip_zero_shot"]["probe"]
    print(f"CLIP recall@1 (val, {len(val.images)} images): {recall:.3f} (chance {1 / len(val.images):.3f}); "
          f"zero-shot on {z['n']} single-object scenes: shape {z['shape_accuracy']:.1%}, colour "
          f"{z['color_accuracy']:.1%}; decoder perplexity (val): {ppl:.2f} (vocab {tok.vocab_size}); {log['seconds']} s")

