"""Device choice for every command and notebook: `auto` is CUDA when torch can use it, else the CPU,
with one warning when an NVIDIA GPU is visible that torch cannot use (a CPU-only build, or a driver
older than the build's CUDA)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .errors import HW3Error


def nvidia_gpu_visible() -> bool:
    """An NVIDIA GPU is present on this machine (driver device file, or `nvidia-smi -L` lists one)."""
    import shutil
    import subprocess

    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if nvidia_gpu_visible():
            warnings.warn(f"an NVIDIA GPU is visible but torch {torch.__version__} cannot use it (a CPU-only "
                          "build, or a driver older than its CUDA); running on the CPU. The README's 'Installing "
                          "torch' section says how to get a CUDA build.", stacklevel=2)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HW3Error(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)
