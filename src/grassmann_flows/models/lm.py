"""Decoder-only language model with a tied head (paper §3.1 and §4.1)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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

    def forward(self, input_ids: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        """input_ids (B, L) -> logits (B, L, V). With `state`, input_ids continue the
        sequence the state has seen (one token at a time when generating)."""
        return F.linear(self.backbone(input_ids, state=state), self.backbone.tok_emb.weight)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["LanguageModel", "count_parameters"]
