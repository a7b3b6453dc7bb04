"""Fused GPU kernels (Triton). Imported lazily so the package works without Triton."""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when Triton can be imported."""
    return importlib.util.find_spec("triton") is not None
