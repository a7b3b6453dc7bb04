"""Multi-head self-attention through PyTorch's fused SDPA kernel, with a KV cache for decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class KVCache:
    """Keys and values of the positions decoded so far, for one attention layer.

    k, v: (B, H, capacity, d_head), preallocated; positions [0, length) are filled.
    Its size grows with the context: 2 * B * capacity * d floats per layer.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    def extend(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append T new positions' k, v: (B, H, T, d_head).

        Returns every key and value so far, (B, H, length, d_head), and the mask of the
        T new queries over them: None for one query (it sees every cached key),
        else (T, length) bool, query i seeing keys up to its own position.
        """
        T, start = k.shape[2], self.length
        if start + T > self.k.shape[2]:
            raise ValueError(f"KV cache full: {start} + {T} positions > capacity {self.k.shape[2]}")
        self.k[:, :, start:start + T] = k
        self.v[:, :, start:start + T] = v
        self.length = start + T
        mask = None
        if T > 1:
            mask = torch.ones(T, self.length, dtype=torch.bool, device=k.device).tril(diagonal=start)
        return self.k[:, :, :self.length], self.v[:, :, :self.length], mask

    def nbytes(self) -> int:
        """Bytes the filled positions take (what a cache grown on demand would hold)."""
        return 2 * self.k[:, :, :self.length].numel() * self.k.element_size()


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

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `capacity` positions."""
        if not self.causal:
            raise ValueError("a bidirectional (causal=False) attention layer cannot decode incrementally")
        d = self.qkv.in_features
        shape = (batch, self.n_heads, capacity, d // self.n_heads)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def forward(
        self, x: torch.Tensor, pad_mask: torch.Tensor | None = None, state: KVCache | None = None
    ) -> torch.Tensor:
        """x: (B, L, d); pad_mask: (B, L) nonzero for real tokens, or None.

        state: a KV cache holding the previous positions; x are then the next L positions.
        """
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, d // self.n_heads).transpose(1, 3).unbind(2)
        mask = None if pad_mask is None else pad_mask.bool()[:, None, None, :]  # (B, 1, 1, L) keys
        if mask is not None and self.causal:  # SDPA takes a mask or is_causal, not both
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        if state is not None:
            k, v, mask = state.extend(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal and mask is None and state is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(B, L, d))
