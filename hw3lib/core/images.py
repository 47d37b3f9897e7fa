"""Safe image reading: size and aspect limits against decompression bombs, RGB conversion, and the
image files of a folder or a list.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import HW3Error, first_line
from .files import require_dir

# Largest image we accept (pixels). PIL's own default warns at ~89M and errors at twice that; the
# HW3 images are at most a few megapixels, so anything past 64M pixels is treated as a bomb.
MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_ASPECT = 50  # longer side / shorter side: a 20000x1 strip would need 4.5e9 pixels once resized
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; errors if there are none. Links with an image
    name that loop or lead nowhere are skipped with a warning naming them, and so are images in subfolders
    (the HW3 layouts are flat), with their count."""
    folder = require_dir(folder, "image folder")
    entries = sorted(folder.iterdir())
    named = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    files = [p for p in named if p.is_file()]
    dead = [p for p in named if p.is_symlink() and not p.exists()]
    nested = _images_below([p for p in entries if p.is_dir()], folder)
    if nested:
        warnings.warn(f"{folder}: {len(nested)} image(s) in subfolders are not read (only the folder's own files "
                      f"are): {', '.join(nested[:5])}{', ...' if len(nested) > 5 else ''}", stacklevel=2)
    if dead:
        loops = [p.name for p in dead if _loops(p)]
        warnings.warn(f"{folder}: skipped {len(dead)} link(s) that {'loop' if loops else 'lead nowhere'}"
                      f"{' or lead nowhere' if loops and len(loops) < len(dead) else ''}: "
                      f"{', '.join(p.name for p in dead[:5])}{', ...' if len(dead) > 5 else ''}", stacklevel=2)
    if not files:
        raise HW3Error(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def _images_below(folders: list[Path], top: Path) -> list[str]:
    """The image files anywhere under `folders`, named relative to `top` (links to folders not followed)."""
    found = []
    for sub in folders:
        for dirpath, _, names in os.walk(sub):
            found += [os.path.relpath(os.path.join(dirpath, n), top) for n in sorted(names)
                      if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _loops(path: Path) -> bool:
    import errno

    try:
        path.stat()
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def image_paths(items) -> list[Path]:
    """Image files from a mix of image files and folders (each folder's images sorted by name)."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            out += list_images(item)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise HW3Error(f"{item}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
            out.append(item)
        else:
            raise HW3Error(f"{item}: no such image file or folder")
    return out


def unique_stems(paths: list[Path]) -> list[Path]:
    """Outputs are keyed by file name without extension: two images with one stem would collide."""
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise HW3Error(f"{p}: same name without extension as {seen[p.stem]} (outputs are keyed by it; rename one)")
        seen[p.stem] = p
    return paths


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert every mode HW3 users meet to 8-bit RGB; alpha is composited onto white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit greyscale: rescale the real value range to 0..255 rather than clipping
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


@contextlib.contextmanager
def _checked(path: Path):
    """The image at `path`, opened (header read, pixels not yet decoded) and within the size limits; every
    problem with the file is an HW3Error naming it."""
    if not path.is_file():
        raise HW3Error(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise HW3Error(f"{path}: empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if max(w, h) > MAX_IMAGE_ASPECT * max(min(w, h), 1):
                    raise HW3Error(f"{path}: refused: {w}x{h} is more than {MAX_IMAGE_ASPECT}:1 (resized for an "
                                   f"encoder it would need {max(w, h) * 224 // max(min(w, h), 1):,} pixels a side)")
                if w * h > MAX_IMAGE_PIXELS:
                    raise HW3Error(
                        f"{path}: refused as a possible decompression bomb ({w}x{h} = {w * h:,} pixels "
                        f"> {MAX_IMAGE_PIXELS:,})"
                    )
                yield im
    except HW3Error:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise HW3Error(f"{path}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise HW3Error(f"{path}: not an image file (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise HW3Error(f"{path}: corrupt or truncated image ({first_line(e)})") from e


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully decoded as RGB and turned upright by its EXIF orientation (as cameras record
    it), or raise HW3Error saying what is wrong with the file."""
    with _checked(Path(path)) as im:
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))


def _decode(im: Image.Image) -> None:
    """Decode every byte of an opened image's pixel data (a truncated or corrupt file fails here, not only
    in its header). A JPEG is decoded at 1/8 scale (its DCT's own reduction): the whole entropy-coded
    stream is still read, in a fraction of the time."""
    if im.format == "JPEG":
        im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()


def check_images(paths: list[Path], skip_bad: bool = False) -> list[Path]:
    """Read every image whole (header, size limits and every byte of its pixels) before any work, so that a
    bad file - empty, not an image, too large, truncated or corrupt - is named before minutes of computing
    rather than after. Bad files raise one HW3Error naming the first and counting the others; with
    `skip_bad` they are left out with one warning naming each, and the good ones returned."""
    good, bad = [], []
    for p in paths:
        try:
            with _checked(Path(p)) as im:
                _decode(im)
                good.append(p)
        except HW3Error as e:
            bad.append(e)
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more unreadable image(s))" if len(bad) > 1 else ""
        raise HW3Error(f"{bad[0]}{more}") from bad[0]
    if bad:
        warnings.warn(f"skipped {len(bad)} bad image(s): " + "; ".join(map(str, bad)), stacklevel=2)
    if not good:
        raise HW3Error("no readable images left after skipping bad ones")
    return good
