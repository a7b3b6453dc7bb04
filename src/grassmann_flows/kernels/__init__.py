"""Fused GPU kernels (Triton). Imported lazily so the package works without Triton.

`wedge_project_fused` (W (u ∧ w), forward and backward, see `wedge_project.py` and
docs/kernels.md) is resolved on first access, so `import grassmann_flows.kernels`
never imports Triton.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["triton_available", "wedge_project_fused"]


def triton_available() -> bool:
    """True when Triton can be imported."""
    return importlib.util.find_spec("triton") is not None


def __getattr__(name: str) -> Any:
    # PEP 562: `from grassmann_flows.kernels import wedge_project_fused` lands here.
    if name == "wedge_project_fused":
        from .wedge_project import wedge_project_fused

        return wedge_project_fused
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
