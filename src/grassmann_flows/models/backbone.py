"""Backbone shared by both models: embeddings, N blocks, final LayerNorm."""

from __future__ import annotations

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

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout == "preln":
            x = x + self.drop(self.mixer(self.norm1(x), pad_mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        if self.layout == "postln":
            x = self.norm1(x + self.drop(self.mixer(x, pad_mask)))
            return self.norm2(x + self.drop(self.ffn(x)))
        h = self.drop(self.norm1(self.mixer(x, pad_mask)))
        return self.norm2(h + self.drop(self.ffn(h)))


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

    def forward(self, input_ids: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        L = input_ids.shape[1]
        if L > self.cfg.n_positions:
            raise ValueError(f"sequence length {L} exceeds n_positions={self.cfg.n_positions}")
        pos = torch.arange(L, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, pad_mask)
        return self.norm(x)


def _gpt2_init(module: nn.Module) -> None:
    """N(0, 0.02) for Linear and Embedding weights, zero biases (GPT-2 / nanoGPT)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
