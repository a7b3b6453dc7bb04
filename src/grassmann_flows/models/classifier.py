"""SNLI classifiers trained from scratch: an encoder of either kind and a 3-way head.

Input is one pair encoding `[CLS] premise [SEP] hypothesis [SEP]` (padded). The
attention encoder is bidirectional with a key-padding mask. The Grassmann encoder
pairs each token with partners on both sides (`pairing="both"`): a classifier has
no future to hide, and one-sided pairing would let only later tokens see earlier
ones. Padded partners are never paired.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbone import Backbone
from .config import ModelConfig

N_CLASSES = 3


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens. h: (B, L, d); mask: (B, L) nonzero = real. Returns (B, d)."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


class PairClassifier(nn.Module):
    """(input_ids (B, L), attention_mask (B, L)) -> logits (B, 3).

    pooling: "mean" over real tokens or "cls" (the first token's state).
    """

    def __init__(self, cfg: ModelConfig, pooling: str = "mean") -> None:
        super().__init__()
        if cfg.causal:
            raise ValueError("a pair classifier needs a bidirectional encoder (causal=False)")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={pooling!r}: expected 'mean' or 'cls'")
        self.cfg = cfg
        self.pooling = pooling
        self.backbone = Backbone(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, N_CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids, attention_mask)
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:
            pooled = masked_mean(h, attention_mask)
        return self.head(self.drop(pooled))
