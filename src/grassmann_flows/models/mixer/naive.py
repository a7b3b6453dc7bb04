"""Naive reference of the Grassmann mixer's feature path (paper §3.2, literally).

Per offset: gather the C(r,2) Plücker coordinates of (z_t, z_{t-Delta}), normalise
them, project with W_plü, then aggregate over the valid offsets. This is what every
public reproduction runs; it is short and obviously right, and the fast and fused
paths are tested against it in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...ops.wedge_project import pluecker
from ..config import MixerConfig
from .common import partner_mask, shift


def normalize(p: torch.Tensor, cfg: MixerConfig) -> torch.Tensor:
    """p / max(|p|, eps) ("clamp") or p / sqrt(|p|^2 + eps) ("sqrt_add"). p: (..., P)."""
    if cfg.norm_form == "clamp":
        return p / torch.linalg.vector_norm(p, dim=-1, keepdim=True).clamp_min(cfg.norm_eps)
    return p * torch.rsqrt(p.pow(2).sum(-1, keepdim=True) + cfg.norm_eps)


def naive_features(
    z: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    offsets: tuple[int, ...],
    cfg: MixerConfig,
    pad_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Aggregated projected Plücker features g.

    z: (B, L, r) reduced tokens. weights/biases: one (d, P)/(d,) pair shared by all
    offsets, or one per offset (cfg.projection == "per_offset"). offsets: signed,
    positive = pair with the past. pad_mask: (B, L) or None. Returns g: (B, L, d).
    """
    per_offset = cfg.projection == "per_offset"
    count = 0
    acc = 0
    for k, delta in enumerate(offsets):
        valid = partner_mask(z, delta, pad_mask, z.dtype)
        count = count + valid
        p = pluecker(z, shift(z, delta))
        if cfg.norm_order == "average_first":
            acc = acc + valid * p
            continue
        if cfg.normalize:
            p = normalize(p, cfg)
        W, b = (weights[k], biases[k]) if per_offset else (weights[0], biases[0])
        acc = acc + valid * F.linear(p, W, b)
    empty = count == 0
    if cfg.aggregation == "mean":
        acc = acc / count.clamp_min(1)
    if cfg.norm_order == "average_first":
        p = normalize(acc, cfg) if cfg.normalize else acc
        g = F.linear(p, weights[0], biases[0])  # an empty position has p = 0, so g = b
        return g if cfg.empty_value == "bias" else torch.where(empty, 0.0, g)
    # Per-offset bias terms have been added only where an offset is valid, so an
    # empty position holds 0 here; "bias" fills in the projection bias instead.
    return torch.where(empty, biases[0], acc) if cfg.empty_value == "bias" else acc
