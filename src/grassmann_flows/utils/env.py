"""Environment header recorded with every result (modded-nanogpt style)."""

from __future__ import annotations

import platform
import subprocess
from typing import Any

import torch

from ..data.sources import REPO_ROOT


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    """git SHA and dirty flag, Python/torch/CUDA/transformers versions, device name."""
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": tf_version,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "hostname": platform.node(),
    }
