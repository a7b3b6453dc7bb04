"""Exact fast rewrite of the Grassmann mixer's feature path.

Two identities make it cheap (the proof is in technical.md, §"The fast mixer"):

(a) Lagrange: |u ∧ v|^2 = |u|^2 |v|^2 - (u·v)^2, so each offset's Plücker norm
    costs a few dot products over r, computed in float32 (or float64) however the
    model runs. We use it in the cancellation-free form |u|^2 |v_perp|^2 with
    v_perp = v - (u·v/|u|^2) u, which leaves u ∧ v unchanged.
(b) The wedge is bilinear and W_plü is shared, so
        mean_Delta [W (u ∧ v_Delta) / n_Delta + b]  =  W (u ∧ w) + b,
        w = sum_Delta c_Delta v_Delta,  c_Delta = 1 / (m_t n_Delta),
    one wedge and one projection per token instead of one per offset.

W (u ∧ w) itself is the op in `ops/wedge_project`: by default its PyTorch form, one
dense GEMM of the outer product u w^T against the antisymmetric A = W S (no gathers);
the fused path passes the Triton kernel instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch

from ...ops.wedge_project import wedge_project
from ..config import MixerConfig
from .common import partner_mask, shift

WedgeProject = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _norm(n2: torch.Tensor, cfg: MixerConfig) -> torch.Tensor:
    """|p| from |p|^2 for the configured clamp, with finite gradients at |p| = 0.

    max(sqrt(x), eps) == sqrt(max(x, eps^2)) in value and in gradient, and the second
    form never differentiates sqrt at 0 (the first positions, repeated tokens).
    """
    n2 = n2.clamp_min(0.0)  # Lagrange's difference can round below 0
    if cfg.norm_form == "clamp":
        return n2.clamp_min(cfg.norm_eps**2).sqrt()
    return (n2 + cfg.norm_eps).sqrt()


def fast_features(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    offsets: tuple[int, ...],
    cfg: MixerConfig,
    pad_mask: torch.Tensor | None = None,
    project: WedgeProject = wedge_project,
) -> torch.Tensor:
    """Same function as `naive.naive_features` for a shared projection.

    z: (B, L, r); weight: (d, P); bias: (d,); offsets: signed multiset. Returns (B, L, d).
    `project` computes W (u ∧ w); the fused path passes its Triton kernel here.
    """
    if cfg.projection != "shared":
        raise ValueError("the collapsed rewrite needs one projection shared by all offsets")
    # Norm arithmetic in float32 at least: Lagrange's difference cancels badly in bf16.
    acc_dtype = torch.promote_types(z.dtype, torch.float32)
    u = z.to(acc_dtype)
    uu = (u * u).sum(-1, keepdim=True)
    w = torch.zeros_like(u)
    count: torch.Tensor | int = 0  # valid offsets per position (with multiplicity)
    # u ∧ v = u ∧ v_perp with v_perp = v - (u.v / |u|^2) u, and |u ∧ v_perp|^2 = |u|^2 |v_perp|^2
    # has no cancellation: Lagrange's |u|^2|v|^2 - (u.v)^2 loses ~1/sin^2 of the angle
    # in float32 when a token's partner is nearly parallel to it (repeated tokens).
    inv_uu = 1.0 / uu.clamp_min(torch.finfo(acc_dtype).tiny)
    for delta, mult in Counter(offsets).items():
        v = shift(u, delta)
        valid = partner_mask(u, delta, pad_mask, acc_dtype) * mult
        count = count + valid
        if cfg.normalize and cfg.norm_order == "normalize_first":
            v = v - ((u * v).sum(-1, keepdim=True) * inv_uu) * u
            valid = valid / _norm(uu * (v * v).sum(-1, keepdim=True), cfg)
        w = w + valid * v
    if cfg.aggregation == "mean":
        w = w / count.clamp_min(1)
    if cfg.normalize and cfg.norm_order == "average_first":
        w = w - ((u * w).sum(-1, keepdim=True) * inv_uu) * u
        w = w / _norm(uu * (w * w).sum(-1, keepdim=True), cfg)
    y = project(z, w.to(z.dtype), weight)
    nonempty = (count > 0).to(acc_dtype)
    # How many bias terms the naive path adds: one per valid offset for a sum of
    # per-offset projections, otherwise one where any offset is valid.
    if cfg.aggregation == "sum" and cfg.norm_order == "normalize_first":
        n_bias = count
    else:
        n_bias = nonempty
    if cfg.empty_value == "bias":
        n_bias = n_bias + (1 - nonempty)
    return y + (n_bias * bias.to(acc_dtype)).to(y.dtype)
