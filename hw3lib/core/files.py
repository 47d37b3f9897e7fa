"""File-level plumbing: atomic writes, JSON reading, locks, the rules for output paths, confinement of
file names to their folder, and the fault points the reliability suite uses.

Nothing here knows about HW3 layouts; `data.py` builds the readers on top of it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import HW3Error, first_line

# ----------------------------------------------------------------------------------------------
# fault points, for the reliability suite: the library calls `fault_point(name)` where a crash would
# matter ("write:<file name>" after the data is written and before the rename, "step" after an
# optimiser step, "validation" inside a validation). A test installs a hook (`fault_hook`) that kills
# the process or raises there; without one a fault point does nothing.

FaultHook = Callable[[str], None]
_fault_hook: FaultHook | None = None


@contextlib.contextmanager
def fault_hook(hook: FaultHook):
    """Inside the block, every `fault_point(name)` calls `hook(name)`."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    try:
        yield hook
    finally:
        _fault_hook = previous


def fault_point(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


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
    complete new one - never half of it, even after SIGKILL (the rename is the commit point). A full disk
    or another I/O fault becomes an HW3Error naming `path`, whatever the writing library raised it as
    (an OSError from Python, a SafetensorError, torch.save's RuntimeError).
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
        with writing(path, "; the previous file, if any, is unchanged"):
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            fault_point(f"write:{path.name}")
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def writing(path: str | os.PathLike, after: str = ""):
    """Inside the block something writes `path`: an I/O fault becomes one HW3Error naming it ("PATH:
    cannot write (why)AFTER"). Libraries report a full disk in their own types (safetensors'
    SafetensorError, torch.save's "unexpected pos" RuntimeError, PIL's OSError without a file name), so
    an exception that is no OSError counts as a full disk when it says so or when the file system holding
    `path` has no room left; any other exception passes unchanged (a bug stays visible)."""
    try:
        yield
    except HW3Error:
        raise
    except OSError as e:
        raise HW3Error(f"{path}: cannot write ({e.strerror or first_line(e)}){after}") from e
    except Exception as e:
        if not (_says_disk_full(e) or disk_full(Path(path).parent)):
            raise
        raise HW3Error(f"{path}: cannot write (no space left on device){after}") from e


def _says_disk_full(e: BaseException) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("no space left", "disk quota", "enospc", "edquot"))


def disk_full(folder: str | os.PathLike, room: int = 1 << 20) -> bool:
    """Whether the file system holding `folder` (or its nearest existing parent) has less than `room`
    bytes left for this user (root may use the reserved blocks)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < room


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


class DuplicateKey(ValueError):
    """A JSON object that names one key twice (json.load would keep the last value without a word)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, turning every failure into an HW3Error naming the file. A key given twice in one
    object is refused, naming the key: a reader must never pick one of two values silently."""
    path = require_file(path, "JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_unique_keys)
    except DuplicateKey as e:
        raise HW3Error(f"{path}: key {e.args[0]!r} is given twice in one object") from e
    except RecursionError as e:
        raise HW3Error(f"{path}: JSON nested too deeply to read") from e
    except UnicodeDecodeError as e:
        raise HW3Error(f"{path}: not UTF-8 text ({e.reason})") from e
    except json.JSONDecodeError as e:
        raise HW3Error(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


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
    resolved_root = os.path.realpath(root)  # what Path.resolve() gives, at a fraction of its cost per name
    candidate = os.path.realpath(os.path.join(root, name))
    if candidate != resolved_root and not candidate.startswith(os.path.join(resolved_root, "")):
        raise HW3Error(f"{source}: file name {name!r} escapes the image folder {root}")
    return root / name


@contextlib.contextmanager
def _exclusive(lock_file: Path, busy: str):
    """Hold an exclusive flock on `lock_file` (which records the holder's pid), or raise HW3Error `busy`
    naming the holder. The kernel drops the lock when the process dies: a killed writer blocks nothing."""
    import fcntl

    f = open(lock_file, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise HW3Error(busy.format(pid=f.read().strip() or "?")) from None
        f.seek(0)
        f.truncate()
        with contextlib.suppress(OSError):  # the pid only helps the message; on a full disk the lock still holds
            os.write(f.fileno(), str(os.getpid()).encode())
        yield
    finally:
        f.close()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike):
    """Hold an exclusive lock on `folder/.lock` (the folder is created): one hw3 train per run folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise HW3Error(f"{folder}: exists and is a file, not a run folder")
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / ".lock", f"{folder}: run folder in use by another hw3 train (pid {{pid}}); wait for "
                    "it or use another --out"):
        yield folder


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, command: str):
    """Hold an exclusive lock on an output folder (a file `.NAME.lock` beside it, so the folder itself may
    be replaced): two commands writing one folder at once would mix or lose files, so the second refuses
    with one line naming the first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.parent / f".{path.name}.lock", f"{path}: being written by another {command} (pid {{pid}}); "
                    "wait for it or choose another folder"):
        yield path


# ----------------------------------------------------------------------------------------------
# whole folders: written beside their place, then swapped in


def swap_in(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the folder `staged` at `target` and remove what was there. Where the kernel offers it (Linux's
    renameat2 with RENAME_EXCHANGE) the two trade places in one step, so a reader sees the old folder or
    the new one, never a mix or nothing; elsewhere two renames, the old folder kept as `.NAME.old` between
    them (`recover_swap` puts it back after a crash there)."""
    staged, target = Path(staged), Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if not target.exists():
        os.rename(staged, target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)  # now the old folder
    else:
        os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old)


def recover_swap(target: str | os.PathLike) -> None:
    """After a crash between `swap_in`'s two renames: the old folder back at `target`."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        os.rename(old, target)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # a file system or kernel without it
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike):
    """Yield an empty folder beside `target` (`.NAME.partial`) to write in; when the block ends without
    an exception it replaces `target` whole (`swap_in`), otherwise it is removed and `target` is left as it
    was. Call it holding `output_lock(target, ...)`: a `.partial` left by a killed writer is removed first."""
    target = Path(target)
    recover_swap(target)
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    with writing(staging):
        staging.mkdir(parents=True)
    try:
        yield staging
        with writing(target):
            swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# a command's own files in shared folders: staged inside each folder, committed together through a journal

STAGED = ".hw3-staged"  # inside each target folder: the same file system, also through a link or a mount
OWNED = ".hw3-owned.json"  # inside each target folder: the names the last commit put there
JOURNAL = ".hw3-commit.json"  # inside the first target folder: a decided commit, until it is complete


def owned_names(target: str | os.PathLike, fallback: list[str] | None = None) -> list[str]:
    """The names the last commit put in `target` (its OWNED record), else `fallback`, else none."""
    record = Path(target) / OWNED
    try:
        names = read_json(record) if record.is_file() else fallback
    except HW3Error:
        names = fallback
    return [n for n in names or [] if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


@contextlib.contextmanager
def staged_files(targets: list[str | os.PathLike], owned: dict | None = None):
    """Write a command's files for several folders, then put them in place together. Yields one empty
    folder per target (`TARGET/.hw3-staged`) to write in. When the block ends without an exception, the
    staged files are committed: a journal naming every move is written (the commit point), each staged file
    replaces its namesake in its target (one rename each), the files the last commit put there and this one
    did not write are removed, and the journal is deleted. Nothing else in a target is touched: a user's
    files, subfolders and links stay, and the folder itself is never replaced, so it may be a link or a
    mount point. A crash before the journal leaves every target as it was; after it, the next
    `staged_files` (or `finish_commit`) on the same first target completes the commit. `owned`: for a
    target with no record of its last commit, the names to treat as its own (e.g. from a summary file).
    Call it holding an output lock on the first target."""
    targets = [Path(t) for t in targets]
    finish_commit(targets[0])
    stages = []
    for t in targets:
        with writing(t):
            t.mkdir(parents=True, exist_ok=True)
            stage = t / STAGED
            if stage.is_symlink() or stage.is_file():
                stage.unlink()
            elif stage.exists():
                shutil.rmtree(stage)
            stage.mkdir()
        stages.append(stage)
    committed = False
    try:
        yield stages
        plan = []
        for t, stage in zip(targets, stages, strict=True):
            files = sorted(p.name for p in stage.iterdir() if p.is_file() and not p.is_symlink())
            old = owned_names(t, (owned or {}).get(t))
            plan.append({"target": str(t.resolve()), "files": files, "remove": sorted(set(old) - set(files))})
        with writing(targets[0] / JOURNAL):
            atomic_write_json(targets[0] / JOURNAL, plan)  # the commit point
        committed = True
        finish_commit(targets[0])
    finally:
        if not committed:
            for stage in stages:
                shutil.rmtree(stage, ignore_errors=True)


def finish_commit(first: str | os.PathLike) -> None:
    """Complete the commit whose journal lies in `first` (a no-op without one): the staged files still
    waiting are moved in, the files of the last commit that this one did not write removed, and the new
    record of owned names written; then the staging folders and the journal go. Safe to repeat: every
    step is one that a crash may already have done."""
    journal = Path(first) / JOURNAL
    if not journal.is_file():
        return
    plan = read_json(journal)
    for entry in plan:
        target = Path(entry["target"])
        stage = target / STAGED
        with writing(target):
            for name in entry["files"]:
                if (stage / name).is_file():
                    os.replace(stage / name, target / name)
                fault_point(f"commit:{name}")
            for name in entry["remove"]:
                p = target / name
                if p.is_file() or p.is_symlink():
                    p.unlink()
        atomic_write_json(target / OWNED, entry["files"])
    for entry in plan:
        shutil.rmtree(Path(entry["target"]) / STAGED, ignore_errors=True)
    journal.unlink()
