"""The wedge projection W (u ∧ w) by its definition: explicit Plücker coordinates.

The reference the other implementations are tested against (in float64); the naive
mixer path (`models/mixer/naive.py`) builds its features from `pluecker`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pluecker(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plücker coordinates of span(u, v): p_ij = u_i v_j - u_j v_i for i < j.

    u, v: (..., r). Returns (..., r(r-1)/2) in row-major upper-triangular order.
    """
    i, j = torch.triu_indices(u.shape[-1], u.shape[-1], offset=1, device=u.device)
    return u[..., i] * v[..., j] - u[..., j] * v[..., i]


def wedge_project_reference(u: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """W (u ∧ w) through explicit Plücker coordinates. u, w: (..., r); weight: (d, P)."""
    return F.linear(pluecker(u, w), weight)
