"""The wedge projection W (u ∧ w) as one dense GEMM in PyTorch, without gathers.

(W (u ∧ w))_k = u^T A_k w with the antisymmetric A_k (A_k[i,j] = W_k,(ij),
A_k[j,i] = -W_k,(ij)), i.e. the outer product vec(u w^T) against A = W S (README.md
in this folder has the proof). Gathers (and their scatter-add backward) are what
made the earlier rewrites slow; this form has none, but writes u w^T to memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def antisymmetrizer(r: int) -> torch.Tensor:
    """S: (P, r*r) with +1 at (k, i*r+j) and -1 at (k, j*r+i) for the k-th pair i < j.

    The mixer keeps S as a buffer, so it lives on the model's device and torch.compile
    sees a plain tensor instead of a host-side construction in every step.
    """
    i, j = torch.triu_indices(r, r, offset=1)
    k = torch.arange(i.numel())
    S = torch.zeros(i.numel(), r * r)
    S[k, i * r + j] = 1.0
    S[k, j * r + i] = -1.0
    return S


def wedge_project(u: torch.Tensor, w: torch.Tensor, weight: torch.Tensor,
                  antisym: torch.Tensor | None = None) -> torch.Tensor:
    """W (u ∧ w) = u^T A_k w for every output k, as one GEMM with K = r*r.

    u, w: (..., r); weight: (d, P) with P = r(r-1)/2; antisym: S of `antisymmetrizer(r)`
    (built here when not given). A = W S is (d, r*r), each entry one entry of W with
    a sign, so it is exact in any dtype. Returns (..., d).
    """
    r = u.shape[-1]
    S = antisymmetrizer(r).to(weight) if antisym is None else antisym
    outer = (u.unsqueeze(-1) * w.unsqueeze(-2)).flatten(-2)  # (..., r*r)
    return F.linear(outer, weight @ S)
