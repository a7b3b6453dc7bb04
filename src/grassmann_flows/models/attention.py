"""Multi-head self-attention through PyTorch's fused SDPA kernel."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    """x (B, L, d) -> (B, L, d); causal for the LM, key-padding-masked for encoders.

    dropout: the rate on the attention probabilities in training (`attn_dropout`).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).transpose(1, 3).unbind(2)
        mask = None if pad_mask is None else pad_mask.bool()[:, None, None, :]  # (B, 1, 1, L) keys
        if mask is not None and self.causal:  # SDPA takes a mask or is_causal, not both
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(B, L, d))
