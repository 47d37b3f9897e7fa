"""Encoder-feature cache: a frozen encoder never runs twice on the same image.

Each image's encoder tokens (S, E) are stored as one safetensors file under
`root/<key[:2]>/<key>.safetensors`, where key = sha256(encoder fingerprint, image bytes). The encoder
fingerprint covers the timm model name, its architecture overrides, its weights (hub tag, or the sha256
of the checkpoint's content: `weights_digest`) and its preprocessing config, so changing any of them
misses the cache instead of serving stale features - also for a file copied over the old one with its
name, size and modification time (`cp -p`, `rsync -a`, `tar`). Writes are atomic. Each entry proves its
content: its metadata holds its own key and the sha256 of its tokens' bytes, checked on every read, so an
entry damaged in place (zeroed, bit-flipped) or replaced by another image's entry is recomputed, with a
warning naming it, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.images import open_image
from ..core.progress import progress as progress_bar


def encoder_fingerprint(spec, data_config: dict, dtype=None, digests: str | os.PathLike | None = None) -> str:
    """The identity of an encoder's tokens: architecture, weights (by content), preprocessing, and the dtype
    its weights are stored in when that is not fp32 (half-precision tokens differ from fp32 ones). `digests`:
    the JSON file that remembers weights digests (`weights_digest`)."""
    weights = {"hub_tag": spec.hub_tag}
    if spec.checkpoint:
        weights = {"sha256": weights_digest(spec.checkpoint, digests)}
    doc = {"model": spec.model, "kwargs": spec.model_kwargs, "weights": weights,
           "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}}
    if dtype is not None and dtype != torch.float32:
        doc["dtype"] = str(dtype)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> str:
    """What changes whenever a file's content may have: device, inode, size, modification and status-change
    times. The status-change time (ctime) is set by the kernel on every write, rename into place or
    metadata change, and no copying tool (`cp -p`, `rsync -a`, `tar`, `touch -r`) can set it back."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


_SEEN: dict[str, tuple[str, str]] = {}  # resolved path -> (file_identity, sha256), this process's digests


def weights_digest(path: str | os.PathLike, memo: str | os.PathLike | None = None) -> str:
    """The sha256 of a weights file's content. Hashing reads the whole file once (a few seconds for a
    ViT-g checkpoint: `bench/bench_weights_digest.py`); with `memo`, a JSON file of
    {resolved path: [file_identity, sha256]}, a file whose identity is unchanged is not read again; within
    one process it is not read again either (training, its checkpoint's record and every later load)."""
    from ..core.files import atomic_write_json

    path = Path(path).resolve()
    ident = file_identity(path)
    seen = _SEEN.get(str(path))
    if seen is not None and seen[0] == ident and memo is None:
        return seen[1]
    known: dict = {}
    if memo is not None and Path(memo).is_file():
        try:
            known = json.loads(Path(memo).read_text(encoding="utf-8"))
        except (ValueError, OSError, RecursionError):
            known = {}  # a damaged memo is rebuilt, never trusted
        if not isinstance(known, dict):
            known = {}
    entry = known.get(str(path))
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == ident and isinstance(entry[1], str):
        return entry[1]
    if seen is not None and seen[0] == ident:  # hashed in this process already: only the memo lacks it
        known[str(path)] = [ident, seen[1]]
        atomic_write_json(memo, known)
        return seen[1]
    digest = file_digest(path)
    if file_identity(path) == ident:  # unchanged while it was read
        _SEEN[str(path)] = (ident, digest)
        if memo is not None:
            known[str(path)] = [ident, digest]
            atomic_write_json(memo, known)
    return digest


def tokens_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: what a cache entry's checksum covers."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Disk cache of encoder tokens keyed by (encoder fingerprint, image content)."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, memory_bytes: int = 1 << 30):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.memory_bytes = memory_bytes  # entries also kept in memory up to this many bytes (0 = none)
        self._memory: dict[str, torch.Tensor] = {}
        self._held = 0  # bytes held in memory
        self._keys: dict[Path, str] = {}
        self.hits = 0
        self.misses = 0
        self.damaged = 0  # entries found damaged and recomputed
        self.shape: tuple[int, ...] | None = None  # (S, E) of this encoder's tokens, once one has been seen

    def key(self, image_path: Path) -> str:
        if image_path not in self._keys:
            self._keys[image_path] = hashlib.sha256(
                (self.fingerprint + file_digest(image_path)).encode()).hexdigest()
        return self._keys[image_path]

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _remember(self, key: str, tokens: torch.Tensor) -> None:
        size = tokens.numel() * tokens.element_size()
        if key not in self._memory and self._held + size <= self.memory_bytes:
            self._memory[key] = tokens
            self._held += size

    def _read(self, key: str) -> torch.Tensor | None:
        if key in self._memory:  # read (and checked) from disk once already
            return self._memory[key]
        t = self._read_file(key)
        if t is not None:
            self._remember(key, t)
        return t

    def _read_file(self, key: str) -> torch.Tensor | None:
        """The entry's tokens, or None (recomputed) when it is missing or does not prove its content."""
        from safetensors import safe_open

        f = self._file(key)
        if not f.is_file():
            return None
        try:
            with safe_open(str(f), framework="pt") as st:
                meta, t = st.metadata() or {}, st.get_tensor("tokens")
        except Exception:  # not a safetensors file of tokens any more
            return self._damaged(f, "not readable")
        if "sha256" not in meta and "key" not in meta:  # written before entries carried checksums
            return None
        if meta.get("key") != key:
            return self._damaged(f, "holds another entry's tokens")
        if meta.get("sha256") != tokens_digest(t):
            return self._damaged(f, "its tokens do not match their checksum")
        ok = (t.dim() == 2 and t.is_floating_point() and bool(torch.isfinite(t).all())
              and (self.shape is None or tuple(t.shape) == self.shape))
        if not ok:  # not finite tokens (S, E) of the shape this cache has seen the encoder give: recomputed
            return self._damaged(f, f"tokens of shape {tuple(t.shape)}, not finite (S, E)")
        self.shape = tuple(t.shape)
        return t

    def _damaged(self, f: Path, why: str) -> None:
        import warnings

        self.damaged += 1
        warnings.warn(f"{f}: damaged feature-cache entry ({why}): recomputed", stacklevel=3)
        return None

    def _write(self, key: str, tokens: torch.Tensor) -> None:
        from ..core.weights import save_safetensors

        self.shape = tuple(tokens.shape)
        tokens = tokens.detach().cpu().contiguous()
        save_safetensors({"tokens": tokens}, self._file(key), {"key": key, "sha256": tokens_digest(tokens)})
        self._remember(key, tokens)

    def get(self, paths: list[Path], encode: Callable[[list[Path]], torch.Tensor], batch_size: int = 32,
            progress: bool = False) -> list[torch.Tensor]:
        """Encoder tokens for every path; `encode(paths) -> (B, S, E)` runs only on misses."""
        out: list[torch.Tensor | None] = [None] * len(paths)
        todo: dict[str, list[int]] = {}  # key -> positions; a batch may hold one image several times
        for i, p in enumerate(paths):
            k = self.key(p)
            if k in todo:
                todo[k].append(i)
                continue
            t = self._read(k)
            if t is None:
                todo[k] = [i]
            else:
                out[i] = t
        self.hits += len(paths) - sum(len(v) for v in todo.values())
        self.misses += len(todo)
        keys = list(todo)
        bar = progress_bar(range(0, len(keys), batch_size), desc="encoding images (cache fill)", leave=False,
                           shown=progress and bool(keys))
        for j in bar:
            chunk = keys[j:j + batch_size]
            feats = encode([paths[todo[k][0]] for k in chunk])
            for k, f in zip(chunk, feats, strict=True):
                f = f.detach().cpu()
                self._write(k, f)
                for i in todo[k]:
                    out[i] = f
        return out  # type: ignore[return-value]


class FeatureSource:
    """Encoder tokens for image indices: from the feature cache, or live through the encoder. `mirrored`:
    per index, whether the image is flipped left to right first (a flip augmentation's twins, always live)."""

    def __init__(self, model, paths: list[Path], transform, cache=None, device="cpu",
                 mirrored: list[bool] | None = None):  # model: a Captioner
        self.model, self.paths, self.transform, self.cache, self.device = model, paths, transform, cache, device
        self.mirrored = mirrored if mirrored is not None and any(mirrored) else None
        if self.mirrored is not None and cache is not None:
            raise ValueError("mirrored images are encoded live: a feature cache is keyed by the file")
        self.encoder_calls = 0  # images pushed through the encoder (for tests and benchmarks)

    def _encode(self, paths: list[Path], flips: list[bool] | None = None) -> torch.Tensor:
        from PIL import ImageOps

        images = [open_image(p) for p in paths]
        images = [ImageOps.mirror(im) if f else im for im, f in zip(images, flips or [False] * len(paths), strict=True)]
        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        self.encoder_calls += len(paths)
        return self.model.encode(x)

    def fill(self, indices=None, batch_size: int = 32) -> None:
        if self.cache is not None:
            idx = range(len(self.paths)) if indices is None else indices
            self.cache.get([self.paths[i] for i in idx], self._encode, batch_size, progress=True)

    def __call__(self, indices: list[int]) -> torch.Tensor:
        if self.cache is None:
            flips = [self.mirrored[i] for i in indices] if self.mirrored is not None else None
            return self._encode([self.paths[i] for i in indices], flips)
        feats = self.cache.get([self.paths[i] for i in indices], self._encode)
        return torch.stack(feats).to(self.device)
