"""Decoder-only language model with a tied head (paper §3.1 and §4.1)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.linear_cross_entropy import linear_cross_entropy
from .backbone import Backbone, StreamState
from .config import ModelConfig


class LanguageModel(nn.Module):
    """input_ids (B, L) -> next-token logits (B, L, V).

    The output head is the token embedding (tied), as the paper's parameter counts
    imply. `kind` in the config picks attention or the Grassmann mixer.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)

    def new_state(self, batch: int, capacity: int | None = None) -> StreamState:
        """An empty decoding state (see `Backbone.new_state`)."""
        return self.backbone.new_state(batch, capacity)

    def forward(self, input_ids: torch.Tensor, state: StreamState | None = None,
                targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """input_ids (B, L) -> logits (B, L, V). With `state`, input_ids continue the
        sequence the state has seen (one token at a time when generating).

        With `targets` (B, L) (IGNORE_INDEX = -100 where there is none) it returns the
        next-token cross-entropy instead ("mean" over the targets, or "sum"), computed by
        `ops/linear_cross_entropy` without the (B, L, V) logits in memory: the value and
        gradients of CE(logits) up to float rounding. Through `forward`, so DDP and
        torch.compile wrappers see it as the model's call.
        """
        hidden = self.backbone(input_ids, state=state)
        if targets is None:
            return F.linear(hidden, self.backbone.tok_emb.weight)
        return linear_cross_entropy(hidden.flatten(0, 1), self.backbone.tok_emb.weight, targets.flatten(),
                                    reduction=reduction)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["LanguageModel", "count_parameters"]
