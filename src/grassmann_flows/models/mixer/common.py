"""Pieces shared by the naive and fast mixer paths: shifts and partner masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(x: torch.Tensor, delta: int) -> torch.Tensor:
    """Partner of every position at offset `delta`, zero-filled where none exists.

    x: (B, L, C). Returns v: (B, L, C) with v[:, t] = x[:, t - delta] when
    0 <= t - delta < L, else 0. delta > 0 looks into the past, delta < 0 the future.
    """
    L = x.shape[1]
    if abs(delta) >= L:
        return torch.zeros_like(x)
    if delta > 0:
        return F.pad(x[:, : L - delta], (0, 0, delta, 0))
    if delta < 0:
        return F.pad(x[:, -delta:], (0, 0, 0, -delta))
    return x


def partner_mask(
    z: torch.Tensor, delta: int, pad_mask: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """1.0 where position t has a valid partner t - delta, else 0.0.

    z: (B, L, r) only supplies the shape and device. pad_mask: (B, L), nonzero for
    real tokens; a padded partner is not valid. Returns (B or 1, L, 1) in `dtype`.
    """
    if pad_mask is None:
        ones = torch.ones(1, z.shape[1], 1, device=z.device, dtype=dtype)
    else:
        ones = pad_mask.to(dtype).unsqueeze(-1)
    return shift(ones, delta)
