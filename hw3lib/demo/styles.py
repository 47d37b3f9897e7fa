"""Render styles: how a demo image looks (photo-like, an outline sketch, blurred, low resolution, dark,
bright), and the framing that web alt-text gives each look.

Real CLIP's prompt effects come from its pretraining text: "a sketch of ..." is written under sketches and
"a blurry photo of ..." under blurred photos, so a framing word carries information about the image, and
the prompt whose framing goes with an image's look scores that image better (Radford et al. 2021,
section 3.1.4; the ImageNet-R templates). In the demo world, each CLIP pretraining image is drawn in one
style and its caption's framing goes with that style most of the time (`pretraining_text`); P1's val
images come in a recorded mix of styles, so prompt effects can be measured per style.

Every style is a pure function of (image, generator): the same seed gives the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# style -> the framing alt-text gives it ("{}" is the scene description); the style's *matched* framing
STYLE_FRAMINGS: dict[str, str] = {
    "photo": "a photo of {}",
    "sketch": "a sketch of {}",
    "blurry": "a blurry photo of {}",
    "lowres": "a low resolution photo of {}",
    "dark": "a dark photo of {}",
    "bright": "a bright photo of {}",
}
STYLES: tuple[str, ...] = tuple(STYLE_FRAMINGS)
PRETRAINING_MIX: tuple[float, ...] = (0.40, 0.12, 0.12, 0.12, 0.12, 0.12)  # share of images per style in the style phase
MATCHED_SHARE = 0.8  # share of training captions framed by their image's style; the rest draw a framing freely
LOWRES_SIDE = 48  # "lowres" images are drawn at this side and blown back up (pixelated)


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def _image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "RGB")


def _photo(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The world's own renders are its photos (noisy gradient backgrounds, anti-aliased objects): as they are."""
    return img.copy()


def _sketch(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An outline drawing: strong edges of the render, inked in a dark shade of their colour, on paper."""
    a = _array(img.filter(ImageFilter.GaussianBlur(radius=1.0)))
    gy, gx = np.gradient(a, axis=(0, 1))
    edge = np.sqrt((gx ** 2 + gy ** 2).sum(-1)) > 18.0  # (H, W)
    paper = rng.uniform(228, 250) + rng.normal(0, 3, size=a.shape)
    ink = _array(img) * 0.55
    return _image(np.where(edge[..., None], ink, paper))


def _blurry(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.2, 1.8))))


def _lowres(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = img.resize((LOWRES_SIDE, LOWRES_SIDE), Image.Resampling.BOX)
    return small.resize(img.size, Image.Resampling.NEAREST)


def _dark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _image(_array(img) * rng.uniform(0.45, 0.55) + rng.normal(0, 2, size=(img.size[1], img.size[0], 3)))


def _bright(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    k = rng.uniform(0.5, 0.6)  # share of the image kept; the rest is washed out to white
    return _image(_array(img) * k + 255 * (1 - k))


_RENDER = {"photo": _photo, "sketch": _sketch, "blurry": _blurry, "lowres": _lowres, "dark": _dark, "bright": _bright}


def render_style(img: Image.Image, style: str, rng: np.random.Generator) -> Image.Image:
    """`img` drawn in `style` (one of STYLES); the same generator state gives the same pixels."""
    if style not in _RENDER:
        raise ValueError(f"unknown style {style!r} (choose from {', '.join(STYLES)})")
    return _RENDER[style](img, rng)


def draw_styles(rng: np.random.Generator, n: int, mix: tuple[float, ...] = PRETRAINING_MIX) -> np.ndarray:
    """(n,) indices into STYLES drawn with the probabilities `mix`."""
    p = np.asarray(mix, dtype=np.float64)
    return rng.choice(len(STYLES), size=n, p=p / p.sum())
