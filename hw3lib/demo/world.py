"""The demo world: a procedurally drawn miniature `hw3_data/` in exactly the course's layout.

P2 / P3 images hold one to three simple objects (shape x colour x size x position) on a noisy gradient
background. Objects sit on the demo ViT's patch grid (GRID x GRID cells of `side / GRID` pixels, each
object 2 or 3 cells wide): a ViT learns shape from patches whose contents repeat, and off the grid the
tiny demo CLIP needs far more steps than a CPU report allows. Captions name the objects, their attributes and
their spatial relations in several phrasings (their grammar: `phrasing`), so a captioner must look at the image: colour, shape,
size and layout are drawn independently and cannot be guessed from text statistics alone.

P1 is harder on purpose: its class is the shape alone (colour is random per image, so colour gives
chance), and each image jitters the object's scale and adds clutter strokes and specks, stronger
noise and sometimes an occluding bar (P1Difficulty). Objects stay on the grid, where the demo CLIP
reads shape best. Each P1 image is then drawn in one
render style (`styles`: photo-like, sketch, blurry, low resolution, dark, bright; styles.json records
which), every style equally often within a class, so prompt effects can be measured per style.

Counterfactual scenes (`render_objects`, `with_shape`) are drawn from a scene's boxes with one object's
shape replaced: the negation-aware CLIP trains on them.

Ground-truth objects go to side files (`boxes.json`: per image, each object's shape, colour, size and
box) so captions and attention maps can be scored.

Determinism: every image is drawn from its own generator seeded by (seed, split, index), and files are
written with fixed encoder settings, so the same seed gives byte-identical trees.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.errors import HW3Error
from ..core.files import atomic_write_json, output_lock, writing
from ..core.progress import progress as progress_bar
from .phrasing import GRAMMAR, SIZE_WORDS, caption_pool
from .styles import STYLE_FRAMINGS, STYLES, render_style

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "heart", "moon"]
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 185),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "pink": (245, 130, 190),
    "brown": (125, 75, 35),
}
GRID = 8  # P2 / P3 objects sit on a GRID x GRID lattice: the demo ViT's patches (96 px / 12 px)
SIZES = dict(zip(SIZE_WORDS, (2, 3), strict=True))  # P2 / P3 object side in grid cells, by its word
MAX_OBJECTS = 3  # a P2 / P3 scene holds one to MAX_OBJECTS objects
SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled, for anti-aliased edges


@dataclass(frozen=True)
class P1Difficulty:
    scale_jitter: float = 0.05  # object side = its grid size x uniform(1 - j, 1 + j)
    offset: int = 0  # pixels off the patch grid (uniform -offset..offset); the demo CLIP reads shape worse
    #                  off the grid, so P1 keeps objects on it
    clutter: int = 3  # at most this many distractor strokes and specks (uniform 0..clutter)
    noise: tuple[float, float] = (6.0, 20.0)  # pixel noise sigma (uniform)
    occlusion: float = 0.35  # chance of a bar across a quarter of the object


P1_DIFFICULTY = P1Difficulty()


@dataclass(frozen=True)
class WorldSize:
    p1_per_class: int  # P1 images per class (10 classes: the shapes)
    p2_train: int  # P2 training images
    p2_val: int  # P2 validation images
    p2_side: int  # P2 / P3 image side in pixels (also P1's); a multiple of GRID
    captions_per_image: int  # captions written per P2 image


WORLD_SIZES = {
    "small": WorldSize(p1_per_class=6, p2_train=120, p2_val=24, p2_side=96, captions_per_image=5),
    "full": WorldSize(p1_per_class=90, p2_train=3000, p2_val=300, p2_side=96, captions_per_image=5),
}
P3_COUNT = 5


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (exclusive ends)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


# ----------------------------------------------------------------------------------------------
# drawing


def _shape_mask(shape: str, side: int) -> Image.Image:
    """An L-mode mask of `shape` filling a (side x side) square, anti-aliased."""
    s = side * SUPERSAMPLE
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    c = s / 2
    r = s / 2 - 1
    if shape == "circle":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif shape == "square":
        d.rectangle([s * 0.08, s * 0.08, s * 0.92, s * 0.92], fill=255)
    elif shape == "triangle":
        d.polygon([(c, 0), (s - 1, s - 1), (0, s - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(c, 0), (s - 1, c), (c, s - 1), (0, c)], fill=255)
    elif shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        d.polygon([(c + r * np.cos(t), c + r * np.sin(t)) for t in a], fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            t = -np.pi / 2 + k * np.pi / 5
            pts.append((c + rad * np.cos(t), c + rad * np.sin(t)))
        d.polygon(pts, fill=255)
    elif shape == "cross":
        w = s * 0.17
        d.rectangle([c - w, 0, c + w, s - 1], fill=255)
        d.rectangle([0, c - w, s - 1, c + w], fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
        d.ellipse([s * 0.27, s * 0.27, s * 0.73, s * 0.73], fill=0)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 80)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        x = (x - x.min()) / (x.max() - x.min()) * (s - 1)
        y = (y - y.min()) / (y.max() - y.min()) * (s - 1)
        d.polygon(list(zip(x.tolist(), y.tolist(), strict=True)), fill=255)
    elif shape == "moon":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
        d.ellipse([s * 0.35, -s * 0.1, s * 1.25, s * 0.9], fill=0)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return m.resize((side, side), Image.Resampling.LANCZOS)


def _background(rng: np.random.Generator, side: int, noise: float = 8.0) -> np.ndarray:
    """A muted two-colour gradient with pixel noise, (side, side, 3) float."""
    a, b = rng.uniform(70, 185, size=(2, 3))
    a = a * 0.6 + a.mean() * 0.4  # desaturate so object colours stand out
    b = b * 0.6 + b.mean() * 0.4
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    return img + rng.normal(0, noise, size=img.shape)


def _clear_of(x0: int, y0: int, px: int, taken) -> bool:
    """Does the square (x0, y0, px) keep clear of every square (x, y, side) in `taken`?"""
    return all(x0 + px <= qx or qx + qs <= x0 or y0 + px <= qy or qy + qs <= y0 for qx, qy, qs in taken)


def _place(rng: np.random.Generator, side: int, sizes: list[str]) -> list[tuple[int, int, int]] | None:
    """Grid-aligned positions (x0, y0, side) for objects of the given sizes, without overlap; None if
    it failed."""
    cell = side // GRID
    placed: list[tuple[int, int, int]] = []
    for size in sizes:
        px = SIZES[size] * cell
        for _ in range(60):
            x0, y0 = (int(v) * cell for v in rng.integers(0, GRID - SIZES[size] + 1, size=2))
            if _clear_of(x0, y0, px, placed):
                placed.append((x0, y0, px))
                break
        else:
            return None
    return placed


def _paint(canvas: np.ndarray, rng: np.random.Generator, shape: str, color: str, x0: int, y0: int, px: int):
    """Composite one anti-aliased object into `canvas` (H, W, 3) in place; returns its tight box."""
    rgb = np.array(COLORS[color], dtype=np.float64) + rng.normal(0, 6, size=3)
    alpha = np.asarray(_shape_mask(shape, px), dtype=np.float64)[..., None] / 255.0
    region = canvas[y0:y0 + px, x0:x0 + px]
    canvas[y0:y0 + px, x0:x0 + px] = region * (1 - alpha) + rgb[None, None] * alpha
    return _tight_box(alpha[..., 0], x0, y0)


def _tight_box(alpha: np.ndarray, x0: int, y0: int) -> tuple[int, int, int, int]:
    """The box (exclusive ends) of a mask's pixels over one half, the mask's top-left corner at (x0, y0)."""
    ys, xs = np.nonzero(alpha > 0.5)
    return x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1


def draw_scene(rng: np.random.Generator, side: int, n_objects: int, shapes=None, colors=None
               ) -> tuple[Image.Image, list[Obj]]:
    """One P2 / P3 image with `n_objects` grid-aligned objects; `shapes` / `colors` fix them, else they
    are drawn."""
    for _ in range(100):
        sizes = [str(rng.choice(list(SIZES))) for _ in range(n_objects)]
        spots = _place(rng, side, sizes)
        if spots is not None:
            break
    else:  # pragma: no cover - cannot happen for <= 3 objects at these sizes
        raise RuntimeError("could not place objects")
    canvas = _background(rng, side)
    objs: list[Obj] = []
    color_names = list(COLORS)
    for k, ((x0, y0, px), size) in enumerate(zip(spots, sizes, strict=True)):
        shape = shapes[k] if shapes is not None else SHAPES[int(rng.integers(len(SHAPES)))]
        color = colors[k] if colors is not None else color_names[int(rng.integers(len(color_names)))]
        objs.append(Obj(shape, color, size, _paint(canvas, rng, shape, color, x0, y0, px)))
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    img = img.filter(ImageFilter.GaussianBlur(radius=0.4))
    return img, objs


def _origin(o: Obj, side: int) -> tuple[int, int, int]:
    """The grid square an object was drawn in, (x0, y0, side in pixels), from its tight box: every
    shape's box starts inside the square's first grid cell."""
    cell = side // GRID
    return o.box[0] // cell * cell, o.box[1] // cell * cell, SIZES[o.size] * cell


def render_objects(rng: np.random.Generator, side: int, objs: list[Obj] | tuple[Obj, ...]) -> Image.Image:
    """A fresh image of exactly these objects, each in its own grid square (a new background and colour
    jitter from `rng`): how counterfactual scenes are drawn from boxes.json."""
    canvas = _background(rng, side)
    for o in objs:
        _paint(canvas, rng, o.shape, o.color, *_origin(o, side))
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(radius=0.4))


def fewer_objects(objs, rng: np.random.Generator) -> list[Obj]:
    """The objects less one, chosen by `rng` (what `render_objects` draws is the same scene without it)."""
    k = int(rng.integers(len(objs)))
    return [o for i, o in enumerate(objs) if i != k]


def more_objects(side: int, objs, rng: np.random.Generator) -> list[Obj] | None:
    """The objects and one more, drawn by `rng` (shape, colour, size) in a free grid square that touches no
    other object's square; None when no square is free. Its box is the one `render_objects` draws."""
    taken = [_origin(o, side) for o in objs]
    cell = side // GRID
    for _ in range(60):
        size = str(rng.choice(list(SIZES)))
        px = SIZES[size] * cell
        x0, y0 = (int(v) * cell for v in rng.integers(0, GRID - SIZES[size] + 1, size=2))
        if _clear_of(x0, y0, px, taken):
            shape, color = SHAPES[int(rng.integers(len(SHAPES)))], list(COLORS)[int(rng.integers(len(COLORS)))]
            box = _tight_box(np.asarray(_shape_mask(shape, px), dtype=np.float64) / 255.0, x0, y0)
            return [*objs, Obj(shape, color, size, box)]
    return None


def with_shape(side: int, objs, k: int, shape: str) -> list[Obj]:
    """The objects with object k drawn as `shape` instead (same colour, size and grid square); its box is
    the one `render_objects` will draw."""
    o = objs[k]
    x0, y0, px = _origin(o, side)
    box = _tight_box(np.asarray(_shape_mask(shape, px), dtype=np.float64) / 255.0, x0, y0)
    return [*objs[:k], Obj(shape, o.color, o.size, box), *objs[k + 1:]]


def draw_p1_scene(rng: np.random.Generator, side: int, shape: str, d: P1Difficulty = P1_DIFFICULTY
                  ) -> tuple[Image.Image, list[Obj]]:
    """A P1 image of one `shape` in a random colour and size, with clutter strokes and specks, pixel
    noise and sometimes an occluding bar."""
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = str(rng.choice(list(SIZES)))
    canvas = _background(rng, side, noise=float(rng.uniform(*d.noise)))
    cell = side // GRID
    px = int(round(SIZES[size] * cell * rng.uniform(1 - d.scale_jitter, 1 + d.scale_jitter)))
    x0, y0 = (int(np.clip(int(g) * cell + int(rng.integers(-d.offset, d.offset + 1)), 0, side - px))
              for g in rng.integers(0, GRID - SIZES[size] + 1, size=2))
    box = _paint(canvas, rng, shape, color, x0, y0, px)
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(d.clutter + 1))):
        ink = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:  # a stroke
            draw.line([tuple(int(v) for v in rng.integers(0, side, size=2)) for _ in range(2)], fill=ink,
                      width=int(rng.integers(1, 3)))
        else:  # a speck
            cx, cy = (int(v) for v in rng.integers(0, side, size=2))
            r = int(rng.integers(1, 4))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=ink)
    if rng.random() < d.occlusion:  # a bar across a quarter of the object, in a background tone
        _occlude(draw, rng, box)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.4))
    return img, [Obj(shape, color, size, box)]


def _occlude(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box) -> None:
    bx0, by0, bx1, by1 = box
    tone = tuple(int(v) for v in rng.uniform(70, 185, size=3))
    if rng.random() < 0.5:  # vertical
        w = max(2, (bx1 - bx0) // 4)
        x = int(rng.integers(bx0, max(bx0 + 1, bx1 - w)))
        draw.rectangle([x, by0 - 2, x + w - 1, by1 + 1], fill=tone)
    else:
        h = max(2, (by1 - by0) // 4)
        y = int(rng.integers(by0, max(by0 + 1, by1 - h)))
        draw.rectangle([bx0 - 2, y, bx1 + 1, y + h - 1], fill=tone)


# ----------------------------------------------------------------------------------------------
# captions


CAPTION_ORDERS = ("reading", "drawn")  # the order captions name a scene's objects in (DEMO.json "caption_order")


def reading_order(objs: list[Obj]) -> list[Obj]:
    """Objects left to right by their centres (top to bottom where two share a column)."""
    return sorted(objs, key=lambda o: (o.center[0], o.center[1]))


def make_captions(rng: np.random.Generator, objs: list[Obj], side: int, n: int, order: str = "reading") -> list[str]:
    """`n` distinct captions for a scene, drawn from phrasings that mention every object. With
    order="reading" every phrasing names the objects left to right (Vinyals et al. 2016: a fixed output
    order is learned faster); with "drawn" they come in the order they were drawn, and two phrasings of
    each pool name them in another order (the first design, kept as an ablation). The same draws of
    `rng` either way."""
    if order not in CAPTION_ORDERS:
        raise ValueError(f"unknown caption order {order!r} (choose from {', '.join(CAPTION_ORDERS)})")
    reading = order == "reading"
    pool = caption_pool(reading_order(objs) if reading else objs, side, reading)
    idx = rng.permutation(len(pool))[:n]
    return [pool[i] for i in sorted(idx)]


# ----------------------------------------------------------------------------------------------
# the world


def _p2_file_name(i: int, split_offset: int) -> tuple[int, str]:
    """COCO-style ids for even i, Flickr-style for odd i - both occur in the real data."""
    if i % 2 == 0:
        iid = 100_000 + split_offset + i
        return iid, f"{iid:012d}.jpg"
    iid = 3_000_000_000 + split_offset * 37 + i * 7919
    return iid, f"{iid}.jpg"


def _save_jpeg(img: Image.Image, path: Path) -> None:
    with writing(path):  # a full disk names the file
        img.save(path, format="JPEG", quality=92, optimize=False, progressive=False, subsampling=0)


def _write_p2_split(root: Path, split: str, count: int, seed: int, ws: WorldSize, boxes: dict, order: str) -> None:
    split_id = {"train": 1, "val": 2}[split]
    out = root / "p2_data" / "images" / split
    out.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in progress_bar(range(count), desc=f"demo p2 {split}", leave=False, mininterval=1.0):
        rng = np.random.default_rng([seed, split_id, i])
        n_obj = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        img, objs = draw_scene(rng, ws.p2_side, n_obj)
        iid, name = _p2_file_name(i, split_id * 1_000_000)
        _save_jpeg(img, out / name)
        images.append({"file_name": name, "id": iid})
        for cap in make_captions(rng, objs, ws.p2_side, ws.captions_per_image, order):
            annotations.append({"caption": cap, "id": len(annotations) + split_id * 10_000_000, "image_id": iid})
        boxes[f"{split}/{name}"] = [o.__dict__ | {"box": list(o.box)} for o in objs]
    doc = {
        "info": {"description": f"hw3lib demo world, {split} split", "seed": seed},
        "licenses": [],
        "annotations": annotations,
        "images": images,
    }
    atomic_write_json(root / "p2_data" / f"{split}.json", doc, indent=None)


def write_demo_world(out_dir: str | Path, seed: int = 0, size: str = "full", progress: bool = True,
                     caption_order: str = "reading") -> Path:
    """Write a complete miniature `hw3_data/` into `out_dir` (created; must be empty or absent). The tree
    is written beside it and renamed into place: it appears complete or not at all, an interrupted run
    leaves no partial folder, and a second writer of the same folder refuses (`output_lock`)."""
    if size not in WORLD_SIZES:
        raise HW3Error(f"unknown demo size {size!r} (choose from {', '.join(WORLD_SIZES)})")
    if caption_order not in CAPTION_ORDERS:
        raise HW3Error(f"unknown caption order {caption_order!r} (choose from {', '.join(CAPTION_ORDERS)})")
    root = Path(out_dir)
    with output_lock(root, "hw3 demo-data"):
        tmp = root.with_name(f".{root.name}.partial")
        try:
            return _write_world(root, tmp, seed, WORLD_SIZES[size], size, progress, caption_order)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _write_world(root: Path, tmp: Path, seed: int, ws: WorldSize, size: str, progress: bool, order: str) -> Path:
    if root.exists() and not root.is_dir():
        raise HW3Error(f"{root}: exists and is a file, not a folder")
    if root.exists() and any(root.iterdir()):
        raise HW3Error(f"{root}: folder exists and is not empty (remove it or choose another)")
    if tmp.exists():  # left by a run that was killed (this process holds the lock)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    # P1: one shape per image in a random colour, made harder (draw_p1_scene), then drawn in a render
    # style (every style equally often within each class, styles.json); class = shape;
    # names {class_id}_{image_id}.png
    p1 = tmp / "p1_data" / "val"
    p1.mkdir(parents=True)
    atomic_write_json(tmp / "p1_data" / "id2label.json", {str(i): s for i, s in enumerate(SHAPES)})
    p1_boxes, p1_styles = {}, {}
    for cid, shape in enumerate(progress_bar(SHAPES, desc="demo p1", leave=False, shown=progress)):
        for k in range(ws.p1_per_class):
            rng = np.random.default_rng([seed, 0, cid, k])
            img, objs = draw_p1_scene(rng, ws.p2_side, shape)
            style = STYLES[k % len(STYLES)]
            name = f"{cid}_{k * len(SHAPES) + cid + 400}.png"
            with writing(p1 / name):
                render_style(img, style, rng).save(p1 / name, format="PNG", optimize=False, compress_level=6)
            p1_boxes[name] = [o.__dict__ | {"box": list(o.box)} for o in objs]
            p1_styles[name] = style
    atomic_write_json(tmp / "p1_data" / "boxes.json", p1_boxes, indent=None)
    atomic_write_json(tmp / "p1_data" / "styles.json", p1_styles, indent=None)

    p2_boxes: dict = {}
    _write_p2_split(tmp, "train", ws.p2_train, seed, ws, p2_boxes, order)
    _write_p2_split(tmp, "val", ws.p2_val, seed, ws, p2_boxes, order)
    atomic_write_json(tmp / "p2_data" / "boxes.json", p2_boxes, indent=None)

    # P3: a handful of multi-object test images with descriptive names
    p3 = tmp / "p3_data" / "images"
    p3.mkdir(parents=True)
    p3_boxes = {}
    for i in range(P3_COUNT):
        rng = np.random.default_rng([seed, 3, i])
        img, objs = draw_scene(rng, ws.p2_side, 1 + i % MAX_OBJECTS)
        name = "_".join(o.shape for o in objs) + f"_{i}.jpg"
        _save_jpeg(img, p3 / name)
        p3_boxes[name] = [o.__dict__ | {"box": list(o.box)} for o in objs]
    atomic_write_json(tmp / "p3_data" / "boxes.json", p3_boxes, indent=None)

    atomic_write_json(tmp / "DEMO.json", {"generator": "hw3lib.demo.world", "seed": seed, "size": size,
                                          "shapes": SHAPES, "colors": list(COLORS), "p1_classes": SHAPES,
                                          "grid": GRID, "p1_difficulty": asdict(P1_DIFFICULTY),
                                          "style_framings": STYLE_FRAMINGS, "caption_order": order,
                                          "grammar": GRAMMAR})
    if root.exists():
        root.rmdir()
    tmp.rename(root)  # the tree appears complete or not at all
    return root


def _obj(raw, where: str, image_size: tuple[int, int] | None = None) -> Obj:
    """One object of a boxes.json, checked field by field: a box with room inside it, and inside the
    image (`image_size`: (width, height), where known)."""
    if not isinstance(raw, dict):
        raise HW3Error(f"{where}: expected an object with shape, color, size and box")
    for key in ("shape", "color", "size"):
        if not isinstance(raw.get(key), str):
            raise HW3Error(f"{where}: field {key!r} should be a string")
    box = raw.get("box")
    if not (isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box)):
        raise HW3Error(f"{where}: field 'box' should be four integers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise HW3Error(f"{where}: box {box} is empty or inverted (needs x0 < x1 and y0 < y1)")
    w, h = image_size if image_size is not None else (None, None)
    if x0 < 0 or y0 < 0 or (w is not None and (x1 > w or y1 > h)):
        raise HW3Error(f"{where}: box {box} lies outside the image"
                       f"{f' ({w} x {h} pixels)' if w is not None else ' (negative coordinates)'}")
    return Obj(raw["shape"], raw["color"], raw["size"], tuple(box))


def read_boxes(path: str | Path, image_size: tuple[int, int] | None = None) -> dict[str, tuple[Obj, ...]]:
    """The demo world's side file: image name -> its objects (shape, colour, size and box). Every box must
    hold pixels, and lie inside the image where its size (width, height) is given; a bad one is refused
    with the image named."""
    from ..core.files import read_json

    raw = read_json(path)
    if not isinstance(raw, dict):
        raise HW3Error(f"{path}: expected an object mapping image names to object lists")
    out = {}
    for name, objs in raw.items():
        if not isinstance(objs, list):
            raise HW3Error(f"{path}: {name!r} should map to a list of objects")
        out[name] = tuple(_obj(o, f"{path}: {name!r}[{i}]", image_size) for i, o in enumerate(objs))
    return out


def read_styles(path: str | Path) -> dict[str, str]:
    """P1's styles.json: image name -> one of styles.STYLES, checked."""
    from ..core.files import read_json

    raw = read_json(path)
    if not isinstance(raw, dict):
        raise HW3Error(f"{path}: expected an object mapping image names to styles")
    for name, style in raw.items():
        if style not in STYLES:
            raise HW3Error(f"{path}: {name!r} has style {style!r}, not one of {', '.join(STYLES)}")
    return dict(raw)


def boxes_for(key: str, boxes: dict[str, tuple[Obj, ...]], split: str = "val", default=None) -> tuple[Obj, ...]:
    """The objects of the image named `key`, a file name or its stem (boxes.json names files as
    `split/name.ext`); `default` when it has none, or KeyError when no default is given."""
    for name in (f"{split}/{key}", key):
        for k in (name, *(name + e for e in (".jpg", ".png", ".jpeg"))):
            if k in boxes:
                return boxes[k]
    if default is not None:
        return default
    raise KeyError(key)


def _side(size: str) -> int | None:
    return WORLD_SIZES[size].p2_side if size in WORLD_SIZES else None


@dataclass(frozen=True)
class DemoWorld:
    """A demo world as `hw3 demo-data` wrote it, read once: its record (DEMO.json) and the objects of
    every image. Code that behaves differently on the demo world takes one of these (None: real data)."""
    root: Path  # the hw3_data/ folder
    seed: int  # the generator's seed
    size: str  # "small" or "full" (WORLD_SIZES)
    shapes: tuple[str, ...]  # shape words, also P1's classes
    colors: tuple[str, ...]  # colour words
    boxes: dict[str, dict[str, tuple[Obj, ...]]]  # part ("p1_data", "p2_data", "p3_data") -> image -> objects
    p1_styles: dict[str, str]  # P1 image name -> its render style (styles.STYLES); empty for an older world
    caption_order: str = "drawn"  # the order P2's captions name objects in (CAPTION_ORDERS); older worlds: drawn

    @classmethod
    def load(cls, data_dir: str | Path) -> DemoWorld | None:
        """The demo world in `data_dir`, or None when it holds real data (no DEMO.json)."""
        from ..core.files import read_json

        root = Path(data_dir)
        record = root / "DEMO.json"
        if not record.is_file():
            return None
        raw = read_json(record)
        if not isinstance(raw, dict):
            raise HW3Error(f"{record}: expected an object")
        for key, kind in (("seed", int), ("size", str), ("shapes", list), ("colors", list)):
            if not isinstance(raw.get(key), kind):
                raise HW3Error(f"{record}: field {key!r} should be a {kind.__name__}")
        side = _side(raw["size"])  # every part's images
        boxes = {part: read_boxes(root / part / "boxes.json", (side, side) if side else None)
                 for part in ("p1_data", "p2_data", "p3_data") if (root / part / "boxes.json").is_file()}
        styles_file = root / "p1_data" / "styles.json"
        p1_styles = read_styles(styles_file) if styles_file.is_file() else {}
        order = raw.get("caption_order", "drawn")
        if order not in CAPTION_ORDERS:
            raise HW3Error(f"{record}: field 'caption_order' = {order!r} (choose from {', '.join(CAPTION_ORDERS)})")
        if raw.get("grammar", GRAMMAR) != GRAMMAR:
            raise HW3Error(f"{record}: its captions were written by another caption grammar ({raw['grammar']!r}; this "
                           f"hw3lib reads {GRAMMAR!r}): write the world again (make demo, or hw3 demo-data)")
        return cls(root, raw["seed"], raw["size"], tuple(raw["shapes"]), tuple(raw["colors"]), boxes, p1_styles, order)

    @property
    def side(self) -> int | None:
        """The side of every image of the world in pixels (None for a size this hw3lib does not know)."""
        return _side(self.size)

    def objects(self, part: str = "p2_data") -> dict[str, tuple[Obj, ...]]:
        """Image name -> objects of one part of the world (empty where the part has no boxes)."""
        return self.boxes.get(part, {})
