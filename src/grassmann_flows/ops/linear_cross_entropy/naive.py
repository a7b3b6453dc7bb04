"""Cross-entropy of a linear head by its definition: materialise the logits, then F.cross_entropy.

The reference `chunked.py` is tested against (in float64, gradients included), and the
path every CUDA run takes (`torch.compile` fuses it there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """CE(hidden @ weight^T, targets). hidden: (N, d); weight: (V, d); targets: (N,) with
    `ignore_index` for positions without a target. reduction: "mean" over the targets, or "sum".
    The logits are taken to at least float32 before the softmax, as the training loop always did."""
    logits = F.linear(hidden, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
