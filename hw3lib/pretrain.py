"""`hw3 demo-models`: pretrain the demo world's small models, in the real file formats.

On the demo world's training split only, this trains and writes:
  tokenizer/encoder.json + vocab.bpe   a byte-level BPE in GPT-2's format
  clip/hw3-tiny-clip.json + open_clip_model.safetensors   a tiny open_clip CLIP (contrastive)
  encoder/clip_visual.safetensors      the CLIP's image tower in OpenAI-CLIP key format, which timm
                                       converts on load exactly as it does real CLIP checkpoints
  decoder/decoder_model.bin            a tiny GPT-2 LM on the captions, in the course format
  assets.json                          the manifest naming all of them
  metrics.json                         training curves, CLIP recall@1 (val), decoder perplexity (val)

Deterministic for a seed; skipped when `assets.json` and a fingerprint of data + settings match.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .assets import ClipSpec, DecoderSpec, EncoderSpec, Manifest, TokenizerSpec, load_clip
from .data import read_caption_file
from .decoder import GPT2, GPT2Config, save_decoder
from .io import HW3Error, atomic_path, atomic_write_json, open_image, require_dir
from .tokenizer import teacher_forcing_batch, train_bpe
from .train import cosine_lr

CLIP_NAME = "hw3-tiny-clip"
FORMAT_VERSION = 1  # bump when the recipe changes, so cached outputs are rebuilt


@dataclass
class DemoModelSettings:
    image_size: int = 64  # CLIP / encoder input side
    patch_size: int = 8  # ViT patch side -> (64/8)^2 = 64 patches + CLS
    vision_width: int = 128  # ViT width
    vision_layers: int = 4  # ViT depth
    head_width: int = 32  # ViT / text head width -> 4 heads
    text_width: int = 128  # CLIP text transformer width
    text_layers: int = 3  # CLIP text transformer depth
    context_length: int = 32  # CLIP text tokens
    embed_dim: int = 128  # joint CLIP embedding
    clip_epochs: int = 9  # contrastive training epochs
    clip_batch: int = 128  # contrastive batch
    clip_lr: float = 1e-3  # AdamW peak learning rate
    bpe_vocab: int = 512  # BPE tokens including <|endoftext|>
    gpt_layers: int = 4  # GPT-2 depth
    gpt_heads: int = 4  # GPT-2 heads
    gpt_width: int = 128  # GPT-2 width
    gpt_block: int = 64  # GPT-2 positions
    gpt_epochs: int = 3  # LM training epochs
    gpt_batch: int = 128  # LM batch
    gpt_lr: float = 2e-3  # AdamW peak learning rate

    @classmethod
    def for_size(cls, size: str) -> DemoModelSettings:
        if size == "small":
            return cls(clip_epochs=4, gpt_epochs=2, vision_layers=2, text_layers=2, gpt_layers=2)
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
    h = hashlib.sha256()
    for f in ("p2_data/train.json", "p2_data/val.json"):
        h.update(hashlib.sha256((data_dir / f).read_bytes()).digest())
    h.update(json.dumps({"size": size, "seed": seed, "settings": asdict(s), "v": FORMAT_VERSION},
                        sort_keys=True).encode())
    return h.hexdigest()


def _load_split_tensors(split, preprocess, desc) -> torch.Tensor:
    return torch.stack([preprocess(open_image(im.path)) for im in tqdm(split.images, desc=desc, leave=False)])


# ----------------------------------------------------------------------------------------------
# CLIP


def train_clip(bundle, train, val, s: DemoModelSettings, seed: int, log: dict) -> float:
    """Contrastive training on (image, one of its captions) pairs; returns val image->text recall@1."""
    model, tokenizer = bundle.model, bundle.tokenizer
    x_train = _load_split_tensors(train, bundle.preprocess, "clip: loading train images")
    caps = [train.captions[im.id] for im in train.images]
    rng = np.random.default_rng(seed)
    batch = min(s.clip_batch, len(train.images))
    steps_per_epoch = len(train.images) // batch
    total = steps_per_epoch * s.clip_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.clip_lr, weight_decay=0.1)
    model.train()
    log["clip_loss"] = []
    bar = tqdm(total=total, desc="clip: contrastive training", leave=False)
    step = 0
    for _ in range(s.clip_epochs):
        order = rng.permutation(len(train.images))
        for b in range(steps_per_epoch):
            idx = order[b * batch:(b + 1) * batch]
            texts = [caps[i][int(rng.integers(len(caps[i])))] for i in idx]
            tokens = tokenizer(texts)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, s.clip_lr, warmup=max(1, total // 20))
            # fp32: on this CPU bf16 autocast is ~15x slower than fp32 for models this small
            img = model.encode_image(x_train[idx], normalize=True)
            txt = model.encode_text(tokens, normalize=True)
            logits = model.logit_scale.exp() * img @ txt.T
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            log["clip_loss"].append(round(loss.item(), 5))
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return clip_recall_at_1(bundle, val)


@torch.no_grad()
def clip_recall_at_1(bundle, split) -> float:
    """Image->text recall@1 over the split's pairs: each image against the first caption of every image."""
    x = _load_split_tensors(split, bundle.preprocess, "clip: loading val images")
    texts = [split.captions[im.id][0] for im in split.images]
    img = bundle.model.encode_image(x, normalize=True)
    txt = bundle.model.encode_text(bundle.tokenizer(texts), normalize=True)
    hits = (img @ txt.T).argmax(dim=1) == torch.arange(len(texts))
    return hits.float().mean().item()


def clip_visual_state_dict(clip_model) -> dict[str, torch.Tensor]:
    """The image tower's tensors under OpenAI CLIP keys (`visual.conv1.weight`, ...)."""
    return {k: v.detach().clone().contiguous() for k, v in clip_model.state_dict().items() if k.startswith("visual.")}


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
    opt = torch.optim.AdamW(model.parameters(), lr=s.gpt_lr, weight_decay=0.01)
    log["gpt_loss"] = []
    bar = tqdm(total=total, desc="gpt2: language-model training", leave=False)
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
            bar.set_postfix(loss=f"{loss.item():.3f}")
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


# ----------------------------------------------------------------------------------------------
# the whole step


def build_demo_models(data_dir, out_dir, size: str = "full", seed: int = 0, force: bool = False) -> Path:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    p2 = require_dir(data_dir / "p2_data", "p2_data folder")
    s = DemoModelSettings.for_size(size)
    fp = _fingerprint(data_dir, size, seed, s)
    manifest_path = out_dir / "assets.json"
    stamp = out_dir / "fingerprint.txt"
    if not force and manifest_path.is_file() and stamp.is_file() and stamp.read_text().strip() == fp:
        print(f"demo models up to date in {out_dir} (cached)")
        return manifest_path
    t0 = time.time()
    torch.manual_seed(seed)
    train = read_caption_file(p2 / "train.json", p2 / "images" / "train")
    val = read_caption_file(p2 / "val.json", p2 / "images" / "val")
    train_caps = [c for _, c in train.pairs()]
    val_caps = [c for _, c in val.pairs()]
    log: dict = {"size": size, "seed": seed, "settings": asdict(s)}

    # (a) tokenizer
    tok = train_bpe(train_caps, s.bpe_vocab)
    tok.save(out_dir / "tokenizer")

    # (b) tiny CLIP
    clip_dir = out_dir / "clip"
    clip_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = clip_dir / f"{CLIP_NAME}.json"
    atomic_write_json(cfg_path, clip_config(s))
    torch.manual_seed(seed)
    bundle = load_clip(ClipSpec(CLIP_NAME, None, str(cfg_path)))
    recall = train_clip(bundle, train, val, s, seed, log)
    from safetensors.torch import save_file

    with atomic_path(clip_dir / "open_clip_model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()}, str(tmp))

    # (c) caption encoder: the image tower, read by timm through its CLIP checkpoint filter
    enc_dir = out_dir / "encoder"
    enc_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(enc_dir / "clip_visual.safetensors") as tmp:
        save_file(clip_visual_state_dict(bundle.model), str(tmp))

    # (d) tiny GPT-2 LM
    gpt, ppl = train_gpt(tok, train_caps, val_caps, s, seed, log)
    save_decoder(gpt, out_dir / "decoder" / "decoder_model.bin")

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
    atomic_write_json(out_dir / "metrics.json", log)
    manifest.save(manifest_path)
    stamp.write_text(fp + "\n")
    print(f"CLIP recall@1 (val, {len(val.images)} images): {recall:.3f} (chance {1 / len(val.images):.3f}); "
          f"decoder perplexity (val): {ppl:.2f} (vocab {tok.vocab_size}); {log['seconds']} s")
    return manifest_path

