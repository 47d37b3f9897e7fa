"""File-level plumbing every other module uses: user-facing errors, atomic writes, safe image and
JSON reading, and confinement of file names to their folder.

Nothing here knows about HW3 layouts; `data.py` builds the readers on top of it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Largest image we accept (pixels). PIL's own default warns at ~89M and errors at twice that; the
# HW3 images are at most a few megapixels, so anything past 64M pixels is treated as a bomb.
MAX_IMAGE_PIXELS = 64_000_000
MAX_IMAGE_ASPECT = 50  # longer side / shorter side: a 20000x1 strip would need 4.5e9 pixels once resized
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def progress_disabled() -> bool:
    """TQDM_DISABLE=1 silences every progress bar, also those that set `disable=` themselves."""
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")


class HW3Error(Exception):
    """A problem with the user's input or files. The CLI prints it as one line and exits non-zero."""


# ----------------------------------------------------------------------------------------------
# fault injection (for the reliability suite): HW3_FAULT="POINT:N" SIGKILLs this process the N-th
# time it passes POINT, or, with HW3_FAULT_ERRNO=E, raises OSError(E) there instead (E=28: the disk is
# full). Points: "write:<file name>" (after the data is written, before the rename), "step" (after an
# optimiser step), "validation" (inside a validation).

_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("HW3_FAULT")
    if not spec:
        return
    target, _, n = spec.rpartition(":")
    if target != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(n):
        code = os.environ.get("HW3_FAULT_ERRNO")
        if code:
            raise OSError(int(code), os.strerror(int(code)))
        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale_temporaries(folder: str | os.PathLike, name: str = "*") -> int:
    """Delete the temporaries (`.NAME.PID.XXXX.tmp`) that killed atomic writes of `name` (default:
    any file) left in `folder`: those whose writing process is gone. A live writer's are kept, so two
    processes sharing a folder (a feature cache) never remove each other's. Returns how many."""
    n = 0
    for p in Path(folder).glob(f".{name}.*.tmp"):
        if _writer_alive(p.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def _writer_alive(tmp_name: str) -> bool:
    parts = tmp_name.split(".")  # "", NAME..., PID, XXXX, "tmp"
    pid = parts[-3] if len(parts) >= 5 else ""
    if not pid.isdecimal():
        return False  # an older temporary without a pid: nothing can still be writing it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    On any exception the temporary file is removed, so readers only ever see the old file or the
    complete new one - never half of it, even after SIGKILL (the rename is the commit point).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, glob.escape(path.name))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise HW3Error(f"{path}: cannot write ({e.strerror or e.__class__.__name__})") from e
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        fault_point(f"write:{path.name}")
        os.replace(tmp, path)
    except OSError as e:  # disk full, I/O error, read-only: name the file; the old one is untouched
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise HW3Error(f"{path}: cannot write ({e.strerror or e.__class__.__name__}); the previous file, if any, "
                       "is unchanged") from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------
# reading


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, turning every failure into an HW3Error naming the file."""
    path = require_file(path, "JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except RecursionError as e:
        raise HW3Error(f"{path}: JSON nested too deeply to read") from e
    except UnicodeDecodeError as e:
        raise HW3Error(f"{path}: not UTF-8 text ({e.reason})") from e
    except json.JSONDecodeError as e:
        raise HW3Error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def error_line(e: BaseException, command: str) -> str:
    """The one line an exception that escaped `command` prints after `error: `. Input errors say
    what is wrong with which file or argument; anything else is labelled an internal error, so it
    stays visible and never passes for a problem with the input."""
    if isinstance(e, HW3Error):
        return str(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else f"{command}: "
        return f"{where}{e.strerror or first_line(e)}"
    if isinstance(e, UnicodeError):
        return f"{command}: text that is not valid UTF-8 ({first_line(e)})"
    if isinstance(e, MemoryError):
        return f"{command}: out of memory (MemoryError)"
    if isinstance(e, RecursionError):
        return f"{command}: input nested too deeply (RecursionError)"
    return f"{command}: internal error (please report): {type(e).__name__}: {first_line(e)}"


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first line (its class name when it has no text), for one-line error messages."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else e.__class__.__name__)[:limit]


def _require(path: str | os.PathLike, what: str, folder: bool) -> Path:
    path = Path(path)
    if "\0" in str(path):
        raise HW3Error(f"{str(path)!r}: {what} path contains a null byte")
    if not path.exists():
        raise HW3Error(f"{path}: {what} not found")
    if path.is_dir() != folder:
        raise HW3Error(f"{path}: expected a {what}, found {kind_of(path)}")
    if not folder and not path.is_file():
        raise HW3Error(f"{path}: expected a {what}, found {kind_of(path)}")
    return path


def kind_of(path: Path) -> str:
    """What a path is, in words, for messages about the wrong kind of file."""
    import stat

    if not path.exists():
        return "nothing (no such file)"
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def require_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    return _require(path, what, folder=True)


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    return _require(path, what, folder=False)


def check_outputs(files: dict, folders: dict, inputs) -> None:
    """The one place the rules live, checked before any work. `files` and `folders` map an argument
    name to the path it writes (None or '-' for none); `inputs` are the files and folders the command
    reads; a label may map to a list (the files a command writes inside its output folder, so an input
    file that sits where one of them will go is refused too). No output may resolve to an input or lie
    inside an input folder, and an output that cannot be written is refused: a file path that is a
    folder, a folder path that is a file, a parent that is a file or not writable."""
    ins = [(Path(p).resolve(), Path(p).is_dir()) for p in inputs
           if p is not None and str(p) != "-" and Path(p).exists()]
    pairs = [(kind, label, out) for kind, outputs in (("file", files), ("folder", folders))
             for label, value in outputs.items() for out in (value if isinstance(value, list) else [value])]
    for kind, label, out in pairs:
        if out is None or str(out) == "-":
            continue
        p, o = Path(out), Path(out).resolve()
        for i, is_dir in ins:
            if o == i:
                raise HW3Error(f"{label} {out}: refusing to write over an input of this command ({i})")
            if is_dir and o.is_relative_to(i):
                raise HW3Error(f"{label} {out}: refusing to write inside the input folder {i}")
        if kind == "file" and p.is_dir():
            raise HW3Error(f"{label} {out}: is a folder (give a file name)")
        if kind == "folder" and p.exists() and not p.is_dir():
            raise HW3Error(f"{label} {out}: exists and is a file, not a folder")
        parent = p.parent if kind == "file" or not p.exists() else p
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise HW3Error(f"{label} {out}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise HW3Error(f"{label} {out}: {parent} is not writable")


def confined_path(root: str | os.PathLike, name: str, source: str | os.PathLike) -> Path:
    """`root / name`, refusing names that are absolute or climb out of `root` (`../x`, symlinks).

    `source` is the file that supplied the name, for the error message.
    """
    root = Path(root)
    if not isinstance(name, str) or not name:
        raise HW3Error(f"{source}: file name {name!r} is not a non-empty string")
    if "\0" in name:
        raise HW3Error(f"{source}: file name {name!r} contains a null byte")
    if os.path.isabs(name) or "\\" in name:
        raise HW3Error(f"{source}: file name {name!r} must be relative to {root}")
    resolved_root = root.resolve()
    candidate = (root / name).resolve()
    if resolved_root != candidate and resolved_root not in candidate.parents:
        raise HW3Error(f"{source}: file name {name!r} escapes the image folder {root}")
    return root / name


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; errors if there are none."""
    folder = require_dir(folder, "image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise HW3Error(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


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


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Hold an exclusive lock on `folder/.lock` (the folder is created). The kernel drops it when the
    process dies, so a SIGKILLed run leaves nothing that blocks its resume."""
    import fcntl

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HW3Error(f"{folder}: exists and is a file, not a run folder")
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise HW3Error(f"{folder}: run folder in use by another hw3 train (pid {pid}); wait for it or use "
                           "another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield folder
    finally:
        f.close()


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


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully decoded as RGB, or raise HW3Error saying what is wrong with the file."""
    path = Path(path)
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
                im.load()
                return _to_rgb(im)
    except HW3Error:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise HW3Error(f"{path}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise HW3Error(f"{path}: not an image file (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise HW3Error(f"{path}: corrupt or truncated image ({first_line(e)})") from e
