"""Environment header recorded with every result and benchmark (modded-nanogpt style)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..data.sources import REPO_ROOT


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(*dists: str) -> str | None:
    """Installed version of the first of `dists` found, read without importing the package."""
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or 'cpu <processor>'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()}".strip()


def git_diff() -> str | None:
    """`git diff HEAD` of the checkout (tracked files), or None outside a git checkout."""
    return _git("diff", "HEAD")


def nvidia_driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split("\n")[0].strip() or None


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """What produced a result: commit (dirty = tracked edits), versions, device, time, command.

    device: the device the work ran on (default: CUDA when available, else the CPU).
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    status = _git("status", "--porcelain", "--untracked-files=no")
    now = dt.datetime.now().astimezone()
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton", "pytorch-triton"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "transformers": _version("transformers"),
        "device": device_name(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "driver": nvidia_driver() if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "hostname": platform.node(),
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "argv": sys.argv[1:],
    }


def save_git_diff(path: Path, dirty: bool | None) -> None:
    """Write `git diff HEAD` to `path` when tracked files have uncommitted edits: the SHA
    alone would not say what code ran. Otherwise remove an earlier run's file."""
    diff = git_diff() if dirty else None
    if diff:
        path.write_text(diff + "\n")
    else:
        path.unlink(missing_ok=True)
