"""W (u ∧ w): the Grassmann mixer's wedge projection, in three implementations.

    naive.py   wedge_project_reference  explicit Plücker coordinates (the definition)
    torch.py   wedge_project            one GEMM of vec(u w^T) against A = W S
    triton.py  wedge_project_fused      Triton kernels, forward and backward, no u w^T in memory

All take u, w: (..., r) and weight: (d, P), P = r(r-1)/2, and return (..., d).
README.md holds the proof that they compute the same function; docs/kernels.md the
kernels' design. `wedge_project_fused` and `kernel_weight` are resolved on first access
(PEP 562), so importing this package never imports Triton.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import torch as _torch

from .naive import pluecker, wedge_project_reference
from .torch import antisymmetrizer, wedge_project

__all__ = [
    "antisymmetrizer", "kernel_weight", "pluecker", "triton_available", "wedge_project",
    "wedge_project_fused", "wedge_project_reference",
]

_LAZY = ("kernel_weight", "wedge_project_fused")


def triton_available() -> bool:
    """True when the Triton path can be imported: Triton >= 3.0 and torch's `triton_op` (torch >= 2.6).

    Checked without importing Triton.
    """
    if importlib.util.find_spec("triton") is None or not hasattr(_torch.library, "triton_op"):
        return False
    try:
        major = int(importlib.metadata.version("triton").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 3


def __getattr__(name: str) -> Any:
    # PEP 562: `from grassmann_flows.ops.wedge_project import wedge_project_fused` lands here.
    if name in _LAZY:
        from . import triton as kernels

        return getattr(kernels, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
