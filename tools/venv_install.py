"""Install the project, editable with its dev extras, into the venv whose python runs this file.

uv installs it where uv can be had: it resolves once and unpacks the wheels side by side (pip unpacks
torch and its CUDA libraries one after another). uv reads no pip configuration, so it is given the index
URLs, find-links and constraints pip is configured with (`pip config list`: files and PIP_* variables)
and pip's rule for choosing among indexes (the best version on any). Its cache lives inside the venv, on
the same disk: the packages are hard links into it, and deleting the venv deletes both. Where uv cannot
be installed or fails, pip installs as before. Standard library only: it runs before anything is installed.

    .venv/bin/python tools/venv_install.py
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = [".[dev]"]  # what `pip install -e` is given (the project, editable)
UV = "uv>=0.9,<1"
# pip option -> uv option; each value a whitespace-separated list, as in pip's configuration
LISTS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
PRECEDENCE = {"global": 0, "install": 1, ":env:": 2}  # later wins, as in pip


def pip_config(python: str = sys.executable) -> dict[str, str]:
    """pip's effective setting per option name (`index-url`, ...) from `pip config list`."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    return parse_config_list(out)


def parse_config_list(text: str) -> dict[str, str]:
    """`section.option='value'` lines -> {option: value}, the highest-precedence section's value kept."""
    best: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, option = name.rpartition(".")
        if not sep or not dot or section not in PRECEDENCE:
            continue
        value = ast.literal_eval(raw)
        option = option.replace("_", "-")
        rank = PRECEDENCE[section]
        if option not in best or rank >= best[option][0]:
            best[option] = (rank, str(value))
    return {k: v for k, (_, v) in best.items()}


def uv_arguments(config: dict[str, str]) -> list[str]:
    """The uv options that give it pip's indexes, links and constraints."""
    args = ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version on any index
    for option, flag in LISTS.items():
        for value in config.get(option, "").split():
            args += [flag, value]
    if config.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    return args


def run(cmd: list[str]) -> bool:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode == 0


def install_with_uv(python: str, venv: Path) -> bool:
    """uv into the venv, then the project with pip's indexes, links and constraints; False where any fails."""
    if not run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", UV]):
        return False
    try:
        config = pip_config(python)
    except (subprocess.CalledProcessError, ValueError, SyntaxError):  # pip's settings unreadable: pip installs
        return False
    return run([str(venv / "bin" / "uv"), "pip", "install", "--python", python, "--cache-dir", str(venv / ".uv-cache"),
                *uv_arguments(config), "-e", *TARGET])


def ensure_pip(python: str = sys.executable) -> bool:
    """A venv whose creation was cut short has a python but no pip ("No module named pip", and every
    install then fails): put pip back with the standard library's ensurepip. False where that fails too."""
    have = subprocess.run([python, "-c", "import pip"], capture_output=True).returncode == 0
    if have:
        return True
    print(f"{python}: this venv has no pip (its creation was cut short?): repairing it with ensurepip", flush=True)
    return run([python, "-m", "ensurepip", "--upgrade", "--default-pip"])


def main(argv: list[str]) -> int:
    if argv:
        print(f"error: {Path(__file__).name} takes no arguments (got {' '.join(argv)!r})", file=sys.stderr)
        return 2
    if sys.prefix == sys.base_prefix:  # never into the system's or a user's own Python
        print(f"error: {sys.executable} is not a venv's python: run this file with .venv/bin/python", file=sys.stderr)
        return 2
    python = sys.executable
    if not ensure_pip(python):
        print(f"error: {sys.prefix}: an incomplete venv that ensurepip cannot repair: remove it and run make again "
              f"(rm -rf {sys.prefix} && make venv)", file=sys.stderr)
        return 2
    if install_with_uv(python, Path(sys.prefix)):
        return 0
    print("uv could not install the project: installing it with pip", flush=True)
    ok = run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", "-e", *TARGET])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
