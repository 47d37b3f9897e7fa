"""Readers for the HW3 data layout (see README "Data layout"), returning typed records.

- P1: `p1_data/val/{class_id}_{image_id}.png` + `id2label.json` (`{"0": "name", ...}`)
- P2: `train.json` / `val.json` in the COCO-captions shape (`images` + `annotations`); real COCO
  captions 2014/2017 files read too.
- Predictions: `{file_name_without_extension: caption}`.

Every problem with a file raises `HW3Error` with a one-line message that names the file.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HW3Error
from .files import confined_path, read_json, require_dir
from .images import list_images

P1_NAME = re.compile(r"^(?P<class_id>[0-9]+)_(?P<image_id>[^_/\\]+)\.(png|jpg|jpeg)$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------
# P1: zero-shot classification folder


@dataclass(frozen=True)
class P1Sample:
    path: Path  # the image file
    class_id: int | None  # from the file name; None when the folder is unlabelled
    image_id: str  # the part after the underscore (or the stem when unlabelled)


@dataclass
class P1Dataset:
    samples: list[P1Sample]
    id2label: dict[int, str]  # class id -> class name, sorted by id

    @property
    def class_ids(self) -> list[int]:
        return sorted(self.id2label)

    @property
    def class_names(self) -> list[str]:
        return [self.id2label[i] for i in self.class_ids]

    @property
    def labelled(self) -> bool:
        return all(s.class_id is not None for s in self.samples)


def read_id2label(path: str | Path) -> dict[int, str]:
    raw = read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise HW3Error(f"{path}: expected a non-empty JSON object {{\"0\": \"class name\", ...}}")
    out: dict[int, str] = {}
    for k, v in raw.items():
        if not (isinstance(k, str) and k.strip().isascii() and k.strip().isdecimal()):
            raise HW3Error(f"{path}: key {k!r} is not a class id (a non-negative integer in a string)")
        if not isinstance(v, str) or not v.strip():
            raise HW3Error(f"{path}: class {k} has no name (value {v!r})")
        if int(k) in out:
            first = next(key for key in raw if key.strip().isascii() and key.strip().isdecimal() and int(key) == int(k))
            raise HW3Error(f"{path}: keys {first!r} and {k!r} are the same class id {int(k)}")
        out[int(k)] = v.strip()
    named: dict[str, int] = {}
    for cid, name in sorted(out.items()):
        if name in named:  # two classes that no prediction could tell apart
            raise HW3Error(f"{path}: class ids {named[name]} and {cid} have one name {name!r}")
        named[name] = cid
    return dict(sorted(out.items()))


def read_p1_folder(image_dir: str | Path, id2label_path: str | Path, labelled: bool | None = True) -> P1Dataset:
    """Read a P1 folder. With `labelled`, every name must be `{class_id}_{image_id}.ext` and every
    class id must be in id2label; with `labelled=False` any image name is accepted (a test folder);
    `None` decides by the names: labelled when every one follows the pattern."""
    id2label = read_id2label(id2label_path)
    files = list_images(image_dir)
    if labelled is None:
        labelled = all(P1_NAME.match(p.name) for p in files)
        odd = [p.name for p in files if not P1_NAME.match(p.name)]
        if odd and len(odd) < len(files):  # a labelled folder with some names that carry no label
            import warnings

            warnings.warn(f"{image_dir}: {len(odd)} of {len(files)} images are not named {{class_id}}_{{image_id}} "
                          f"and have no label ({', '.join(odd[:3])}{', ...' if len(odd) > 3 else ''}); accuracy "
                          f"counts the {len(files) - len(odd)} that are", stacklevel=2)
    samples = []
    for p in files:
        m = P1_NAME.match(p.name)
        if not labelled:
            samples.append(P1Sample(p, int(m["class_id"]) if m else None, p.stem))
            continue
        if not m:
            raise HW3Error(f"{p}: file name is not of the form {{class_id}}_{{image_id}}.png")
        cid = int(m["class_id"])
        if cid not in id2label:
            raise HW3Error(f"{p}: class id {cid} is not in {id2label_path}")
        samples.append(P1Sample(p, cid, m["image_id"]))
    if not labelled and any(s.class_id is not None and s.class_id not in id2label for s in samples):
        samples = [P1Sample(s.path, None, s.image_id) for s in samples]  # names are not labels here
    return P1Dataset(samples, id2label)


# ----------------------------------------------------------------------------------------------
# P2: caption files


@dataclass(frozen=True)
class ImageRecord:
    id: int  # image id used by the annotations
    file_name: str  # relative to the image folder
    path: Path | None  # resolved file, when an image folder was given

    @property
    def key(self) -> str:
        """The prediction-file key: the file name without extension (the course's convention)."""
        return Path(self.file_name).stem


@dataclass
class CaptionSet:
    source: Path  # the JSON file read
    images: list[ImageRecord]  # in file order
    captions: dict[int, list[str]] = field(default_factory=dict)  # image id -> its captions

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self) -> list[tuple[ImageRecord, str]]:
        """Every (image, caption) pair, in file order."""
        return [(im, c) for im in self.images for c in self.captions.get(im.id, [])]

    def references(self) -> dict[str, list[str]]:
        """Prediction key -> reference captions, as the evaluator needs them."""
        return {im.key: list(self.captions.get(im.id, [])) for im in self.images}

    def by_key(self) -> dict[str, ImageRecord]:
        return {im.key: im for im in self.images}

    def subset(self, keys) -> CaptionSet:
        """A new caption set of the images whose keys are given (file order kept)."""
        keys = set(keys)
        images = [im for im in self.images if im.key in keys]
        return CaptionSet(self.source, images, {im.id: list(self.captions.get(im.id, [])) for im in images})


def _require_record(rec, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(rec, dict):
        raise HW3Error(f"{where} is not an object")
    for key in keys:
        if key not in rec:
            raise HW3Error(f"{where} has no '{key}'")
    return rec


def _require_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HW3Error(f"{where} must be an integer, found {value!r}")
    return value


def read_caption_file(
    json_path: str | Path, image_dir: str | Path | None = None, check_images: bool = True
) -> CaptionSet:
    """Read a `train.json` / `val.json` (or a COCO captions file).

    With `image_dir`, every file name must stay inside it and (with `check_images`) exist there.
    """
    json_path = Path(json_path)
    raw = read_json(json_path)
    if not isinstance(raw, dict):
        raise HW3Error(f"{json_path}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if key not in raw:
            raise HW3Error(f"{json_path}: missing key '{key}'")
        if not isinstance(raw[key], list):
            raise HW3Error(f"{json_path}: '{key}' must be a list")
    if image_dir is not None:
        image_dir = require_dir(image_dir, "image folder")

    images: list[ImageRecord] = []
    seen_ids: set[int] = set()
    seen_keys: dict[str, int] = {}
    for i, rec in enumerate(raw["images"]):
        where = f"{json_path}: images[{i}]"
        _require_record(rec, ("id", "file_name"), where)
        iid = _require_int(rec["id"], f"{where}.id")
        if iid in seen_ids:
            raise HW3Error(f"{json_path}: duplicate image id {iid} (images[{i}])")
        seen_ids.add(iid)
        name = rec["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise HW3Error(f"{where}.file_name must be a non-empty string")
        path = None
        if image_dir is not None:
            path = confined_path(image_dir, name, json_path)
            if check_images and not path.is_file():
                raise HW3Error(f"{json_path}: image {name!r} (id {iid}) not found in {image_dir}")
        elif Path(name).is_absolute() or ".." in Path(name).parts:
            raise HW3Error(f"{json_path}: file name {name!r} escapes the image folder")
        stem = Path(name).stem
        if stem in seen_keys:
            raise HW3Error(f"{json_path}: images {seen_keys[stem]} and {iid} share the prediction key {stem!r}")
        seen_keys[stem] = iid
        images.append(ImageRecord(iid, name, path))

    captions: dict[int, list[str]] = defaultdict(list)
    for i, ann in enumerate(raw["annotations"]):
        where = f"{json_path}: annotations[{i}]"
        _require_record(ann, ("image_id", "caption"), where)
        iid = _require_int(ann["image_id"], f"{where}.image_id")
        if iid not in seen_ids:
            raise HW3Error(f"{where} points at image id {iid}, which is not in 'images'")
        cap = ann["caption"]
        if not isinstance(cap, str):
            raise HW3Error(f"{where}.caption must be a string, found {type(cap).__name__}")
        if not cap.strip():
            raise HW3Error(f"{where} has an empty caption (image id {iid})")
        captions[iid].append(cap.strip())
    return CaptionSet(json_path, images, dict(captions))


# ----------------------------------------------------------------------------------------------
# prediction files


def read_predictions(path: str | Path) -> dict[str, str]:
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise HW3Error(f"{path}: expected a JSON object {{file_name_without_extension: caption}}")
    bad = [k for k, v in raw.items() if not isinstance(v, str)]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise HW3Error(f"{path}: {len(bad)} value(s) are not strings (keys {shown})")
    return dict(raw)


def check_prediction_keys(predictions: dict[str, str], expected: list[str] | set[str], source) -> None:
    """The course evaluator's rule: prediction keys equal the expected image keys exactly."""
    expected = set(expected)
    missing = sorted(expected - set(predictions))
    extra = sorted(set(predictions) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
        if extra:
            parts.append(f"{len(extra)} extra ({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''})")
        raise HW3Error(f"{source}: prediction keys do not match the images: {'; '.join(parts)}")


# ----------------------------------------------------------------------------------------------
# images in bulk
