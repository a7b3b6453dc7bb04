"""Backbone shared by both models: embeddings, N blocks, final LayerNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .attention import SelfAttention
from .config import ModelConfig
from .mixer import GrassmannMixer


class FeedForward(nn.Module):
    """Linear(d, d_ff) -> GELU -> Dropout(hidden_dropout) -> Linear(d_ff, d). x: (B, L, d) -> (B, L, d)."""

    def __init__(self, d_model: int, d_ff: int, hidden_dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.drop = nn.Dropout(hidden_dropout)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(self.act(self.up(x))))


class Block(nn.Module):
    """One layer: token mixer (attention or Grassmann) and FFN, in one of three layouts.

    preln:        x = x + drop(mix(LN1 x));   x = x + drop(FFN(LN2 x))
    postln:       x = LN1(x + drop(mix x));   x = LN2(x + drop(FFN x))
    paper_postln: h = drop(LN1(mix x));       x = LN2(h + drop(FFN h))   (paper §3.2:
                  the blend alpha*x + (1-alpha)*g already carries x; no extra residual)
    """

    def __init__(self, cfg: ModelConfig, layer: int, mixer: nn.Module | None = None) -> None:
        """mixer: a token mixer to use instead of the one `cfg` describes (the SNLI heads'
        windowed Grassmann mixer), with the same forward(x, pad_mask) signature."""
        super().__init__()
        if mixer is None and cfg.kind == "transformer":
            mixer = SelfAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout, cfg.causal)
        elif mixer is None:
            mixer = GrassmannMixer(cfg.d_model, cfg.mixer, cfg.layer_offsets(layer))
        self.mixer = mixer
        # Attention has no blend carrying x, so its "paper_postln" is the residual post-LN block.
        self.layout = "postln" if cfg.kind == "transformer" and cfg.block == "paper_postln" else cfg.block
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.ffn_dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None, state: Any = None) -> torch.Tensor:
        """x: (B, L, d). state: the mixer's streaming state (decoding), passed on to it."""
        mix_args = (pad_mask,) if state is None else (pad_mask, state)  # custom mixers take no state
        if self.layout == "preln":
            x = x + self.drop(self.mixer(self.norm1(x), *mix_args))
            return x + self.drop(self.ffn(self.norm2(x)))
        if self.layout == "postln":
            x = self.norm1(x + self.drop(self.mixer(x, *mix_args)))
            return self.norm2(x + self.drop(self.ffn(x)))
        h = self.drop(self.norm1(self.mixer(x, *mix_args)))
        return self.norm2(h + self.drop(self.ffn(h)))


@dataclass
class StreamState:
    """Decoding state of a whole backbone: the next position and one state per layer
    (a `KVCache` for attention, a `RingState` for the Grassmann mixer)."""

    position: int
    layers: list[Any]

    def nbytes(self) -> int:
        """Bytes the per-layer states hold at the current position."""
        return sum(layer.nbytes() for layer in self.layers)


class Backbone(nn.Module):
    """input_ids (B, L) -> hidden states (B, L, d): E(x) + P, dropout, blocks, final LN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        if cfg.init == "gpt2":
            self.apply(_gpt2_init)

    def new_state(self, batch: int, capacity: int | None = None) -> StreamState:
        """An empty decoding state for `batch` sequences of up to `capacity` positions
        (default n_positions; only a KV cache uses it). Raises ValueError with the reason
        for a model that cannot decode one token at a time."""
        capacity = self.cfg.n_positions if capacity is None else min(capacity, self.cfg.n_positions)
        w = self.tok_emb.weight
        return StreamState(0, [block.mixer.new_state(batch, capacity, w.device, w.dtype) for block in self.blocks])

    def forward(
        self, input_ids: torch.Tensor, pad_mask: torch.Tensor | None = None, state: StreamState | None = None
    ) -> torch.Tensor:
        """input_ids: (B, L). state: decoding state; input_ids are then the next L positions
        after the ones it has seen, and it is advanced past them."""
        L = input_ids.shape[1]
        start = 0 if state is None else state.position
        if start + L > self.cfg.n_positions:
            raise ValueError(
                f"sequence length {start + L} exceeds the position table (n_positions={self.cfg.n_positions})"
            )
        if state is not None and pad_mask is not None:
            raise ValueError("decoding with a state takes no padding mask")
        pos = torch.arange(start, start + L, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, pad_mask, None if state is None else state.layers[i])
        if state is not None:
            state.position += L
        return self.norm(x)


def _gpt2_init(module: nn.Module) -> None:
    """N(0, 0.02) for Linear and Embedding weights, zero biases (GPT-2 / nanoGPT)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
