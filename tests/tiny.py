"""Tiny random-weight models for unit tests (timm style): built in milliseconds, no training, no files.

`GPT2Config.tiny` is the decoder (vocabulary 300, width 32, 2 layers, 2 heads); the captioner's encoder
tokens are random (B, S, ENC_DIM) tensors unless a test needs the image path, which `tiny_encoder` gives
(a 2-block timm CLIP ViT on 32x32 images, 8x8 patches: 16 patches + CLS)."""

import torch

from hw3lib.models.captioner import Captioner, CaptionerConfig
from hw3lib.models.gpt2 import GPT2, GPT2Config, is_cross_attention_key

EOT = 299  # the tiny vocabulary's last id, used as the end token
ENC_DIM = 16  # width of the random encoder tokens
SMALL = {"lora_r": 4, "lora_alpha": 8.0, "adapter_dim": 8, "virtual_tokens": 3}  # PEFT settings at tiny size


def tiny_decoder(seed: int = 0, cross_attention: bool = True, coverage: bool = False) -> GPT2:
    torch.manual_seed(seed)
    dec = GPT2(GPT2Config.tiny(cross_attention=cross_attention, coverage=coverage))
    for blk in dec.h if coverage else []:
        torch.nn.init.zeros_(blk.crossattention.coverage)
    return dec


def language_model_of(decoder: GPT2) -> GPT2:
    """The same decoder without its cross-attention sub-layers (the pretrained LM a captioner starts from)."""
    lm = GPT2(GPT2Config.tiny())
    lm.load_state_dict({k: v for k, v in decoder.state_dict().items() if not is_cross_attention_key(k)})
    return lm.eval()


def tiny_captioner(kind: str = "lora", seed: int = 0, encoder=None, **kw) -> Captioner:
    """The untrained captioner on a tiny random decoder (no encoder: it reads (B, S, ENC_DIM) tokens)."""
    dec = tiny_decoder(seed, coverage=kw.get("coverage_attention", False))
    return Captioner(encoder, dec, CaptionerConfig(peft=kind, **(SMALL | kw)),
                     encoder_dim=None if encoder is not None else ENC_DIM)


def perturbed(model: Captioner, seed: int = 0, scale: float = 0.2) -> Captioner:
    """`model` with random trainable tensors (so the image matters and PEFT is active), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_encoder(seed: int = 0):
    """A random 2-block timm CLIP ViT (vit_base_patch16_clip_224's architecture at tiny width)."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_base_patch16_clip_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=2, num_classes=0,
                             pretrained_cfg_overlay={"input_size": (3, 32, 32)}).eval()


def encoder_tokens(B: int = 3, S: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, S, ENC_DIM, generator=torch.Generator().manual_seed(seed))  # (B, S, E)


class TinyTokenizer:
    """Token i reads " t{i}"; the end token reads <|endoftext|> (what `attention.capture` needs)."""

    eot_id = EOT

    def id_to_token_text(self, i: int) -> str:
        return "<|endoftext|>" if i == EOT else f" t{i}"

    def decode(self, ids) -> str:
        return "".join(self.id_to_token_text(i) for i in ids)


def random_images(folder, n: int = 2, size: int = 48, seed: int = 0) -> list:
    """`n` random RGB JPEGs in `folder`; returns their paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths
