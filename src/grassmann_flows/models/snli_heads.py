"""SNLI heads on a fixed DistilBERT backbone: the paper's Table 3 setting (§4.2).

DistilBERT-base-uncased turns each sentence into contextual token features
(B, L, 768). A small head, trained on top, maps them to 3 logits:

- `TransformerHead`: 2 pre-LN self-attention blocks over the tokens of both
  sentences together (segment + position embeddings, key-padding mask), masked
  mean pooling, a final linear layer (the paper's "final linear layer"); or, with
  combine="siamese", over each sentence alone with the Grassmann head's classifier.
- `GrassmannPluckerHead`: 2 Grassmann mixing layers per sentence, pairing tokens
  inside windows of 8 (stride 8) as 2-planes in R^64 (2,016 Plücker coordinates),
  4 mixing heads that group the pairs by distance, the paper's gated blend and
  post-LN block, masked mean pooling per sentence, [u; v; |u-v|; u*v], an MLP.

The reasoning behind every choice the paper leaves open is in docs/snli_distilbert.md.
Both heads take `forward(premise, premise_mask, hypothesis, hypothesis_mask)`; with
`encoding="pair"` the single [CLS] p [SEP] h [SEP] sequence rides in the premise
slot and the hypothesis arguments are None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Block
from .classifier import masked_mean
from .config import MixerConfig, ModelConfig
from .mixer import GrassmannMixer
from ..ops.wedge_project import pluecker

__all__ = [
    "BackboneUnavailableError", "DistilBertNLI", "GrassmannPluckerHead", "HEADS", "TransformerHead",
    "WindowGrassmannMixer", "build_head", "build_snli_model", "load_backbone", "nli_inputs",
    "pair_mlp", "scale_bands", "siamese_logits", "window_pairs", "window_partners",
]

Encoding = Literal["separate", "pair"]
Combine = Literal["joint", "siamese"]
N_CLASSES = 3
DEFAULT_BACKBONE = "distilbert-base-uncased"


# ----------------------------------------------------------------------------- backbone


class BackboneUnavailableError(RuntimeError):
    """The DistilBERT weights are neither in the HF cache, nor a local directory, nor fetchable."""


def _offline() -> bool:
    """HF offline mode, read at call time (huggingface_hub reads it only at import)."""
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_backbone(name_or_path: str = DEFAULT_BACKBONE, local_files_only: bool | None = None):
    """DistilBertModel from a hub name (HF cache, fetched if online) or a local directory.

    local_files_only: None follows HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE. Raises
    BackboneUnavailableError with a one-line message saying how to provide the weights.
    """
    from transformers import DistilBertModel

    if local_files_only is None:
        local_files_only = _offline()
    path = Path(name_or_path).expanduser()
    is_path = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if is_path and not path.is_dir():
        reason = f"no directory {path}"
    else:
        try:
            return DistilBertModel.from_pretrained(str(path) if is_path else name_or_path,
                                                   local_files_only=local_files_only)
        except Exception as e:  # hub, network and file errors come in many types; report any as one line
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    from huggingface_hub.constants import HF_HUB_CACHE

    raise BackboneUnavailableError(
        f"DistilBERT backbone {name_or_path!r} is not available ({reason}). Either run once with "
        f"network access so it is fetched from the Hugging Face hub into the HF cache ({HF_HUB_CACHE}), "
        f"or pass a local directory holding config.json and the weights: --backbone "
        f"/path/to/distilbert-base-uncased (made e.g. with `huggingface-cli download "
        f"distilbert-base-uncased --local-dir /path/to/distilbert-base-uncased`)."
    )


def save_tiny_backbone(path: Path, dim: int = 32, n_layers: int = 1, seed: int = 0) -> Path:
    """Save a tiny randomly initialised DistilBERT (bert-base-uncased vocabulary, 2 heads,
    FFN 2 x dim, 64 positions) to `path` for `load_backbone`: the smoke run's (QUICK=1)
    stand-in for the 250 MB pretrained weights, which takes the heads' code path in seconds.
    Written beside `path` and renamed into place, so an interrupted save is never loaded."""
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=30522, dim=dim, n_layers=n_layers, n_heads=2, hidden_dim=2 * dim,
                           max_position_embeddings=64)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    DistilBertModel(cfg).save_pretrained(tmp)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- pairing


def window_pairs(length: int, window: int, stride: int) -> torch.Tensor:
    """Ordered pairs (t, s), t != s, of positions that share a window.

    Windows start at 0, stride, 2*stride, ... and are clipped at `length`; a pair
    met in two overlapping windows is kept once. Returns (n_pairs, 2) long, sorted.
    """
    if not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window (every token in a window), got {stride=} {window=}")
    pairs = {
        (t, s)
        for start in range(0, length, stride)
        for t in range(start, min(start + window, length))
        for s in range(start, min(start + window, length))
        if t != s
    }
    return torch.tensor(sorted(pairs), dtype=torch.long).view(-1, 2)


def scale_bands(window: int, n_heads: int) -> tuple[tuple[int, ...], ...]:
    """Split the pair distances 1..window-1 into `n_heads` contiguous bands of about equal pairs.

    A window of w tokens holds w - d pairs at distance d. Counting pairs from distance
    1 up, distance d joins the band (quantile of the total) where the middle of its own
    pairs falls: (8, 4) -> ((1,), (2,), (3, 4), (5, 6, 7)), holding 7, 6, 9 and 6 of
    the window's 28 pairs.
    """
    counts = [window - d for d in range(1, window)]
    bands: list[list[int]] = [[] for _ in range(n_heads)]
    before = 0
    for d, c in enumerate(counts, 1):
        bands[min(n_heads * (2 * before + c) // (2 * sum(counts)), n_heads - 1)].append(d)
        before += c
    if not all(bands):
        raise ValueError(f"{n_heads} mixing heads leave a distance band empty in windows of {window}")
    return tuple(tuple(b) for b in bands)


def window_partners(
    length: int | torch.SymInt, window: int, stride: int, n_heads: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every position's window partners as fixed slots, for a gather: the pairs of `window_pairs`.

    Returns partner (L, K) long, valid (L, K) bool, head (L, K) long: slot k of position
    t holds s = first(t) + k, where first(t) starts the first window holding t; valid says
    whether s is a partner (s != t, s < L, s in a window holding t); head is the mixing
    head of the distance |t - s| (partner 0 where not valid). The windows holding t cover
    one interval, at most K = floor((window - 1) / stride) * stride + window long.

    Tensor arithmetic on `length` alone, with K fixed by (window, stride): under
    torch.compile one graph serves every batch width (no per-width cache or guard).
    """
    K = (window - 1) // stride * stride + window
    head_of = [0] * window  # distance -> head (distance 0 is never valid)
    for h, band in enumerate(scale_bands(window, n_heads)):
        for d in band:
            head_of[d] = h
    t = torch.arange(length, device=device)[:, None]
    # ceil((t - window + 1) / stride), floored at 0; floor-dividing a clamped value trips
    # inductor's range analysis for a dynamic length (torch 2.13), clamping the quotient does not
    first = ((t - window + stride) // stride).clamp(min=0) * stride
    end = torch.clamp(t // stride * stride + window, max=length)  # the last window holding t ends here
    s = first + torch.arange(K, device=device)
    valid = (s < end) & (s != t)
    partner = torch.where(valid, s, 0)
    head = torch.tensor(head_of, device=device)[(partner - t).abs().clamp(max=window - 1)]
    return partner, valid, head


# ----------------------------------------------------------------------------- Grassmann head


class WindowGrassmannMixer(GrassmannMixer):
    """The paper's mixer (reduce, Plücker, project, gate, blend) with windowed pairs.

    Instead of offsets into the past, token t pairs with every other real token s
    of its window (both sides: an encoder has no future to hide). Each of the
    `n_heads` mixing heads averages the normalised Plücker vectors p_hat(z_t, z_s)
    over the pairs in its distance band (`scale_bands`) and projects them, with its
    own rows of W_plü (2016 -> d/n_heads), into its own slice of g. So every head
    sees the full 64-dim plane (2,016 coordinates) and the heads together cost one
    2016 -> d projection. A head with no valid pair at t contributes 0 there.

    The bilinear rewrite of mixer/fast.py keeps it cheap: mean_s p_hat(z_t, z_s) =
    z_t ∧ w_t with w_t = sum_s z_s / (n |z_t ∧ z_s|), and |z_t ∧ z_s| = |z_t| |z_s,perp|
    (z_s less its component along z_t), so no per-pair Plücker vector is ever formed.
    """

    def __init__(self, d_model: int, reduced_dim: int, window: int, stride: int,
                 n_heads: int, norm_eps: float) -> None:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        super().__init__(d_model, MixerConfig(reduced_dim=reduced_dim, norm_eps=norm_eps), offsets=())
        scale_bands(window, n_heads)  # fail at build time, not on the first batch
        self.window, self.stride, self.n_heads = window, stride, n_heads

    def pair_weights(
        self, z: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Partners and per-head averaging weights of the normalised pairs.

        z: (N, L, r). Returns partners zs (N, L, K, r), each with its component along
        z_t removed (z_t ∧ z_s is unchanged), weights c (N, L, K, H) with
        mean_{s in head h} p_hat(z_t, z_s) = sum_k c[..., k, h] p(z_t, zs_k), and
        nonempty (N, L, H), all in float32 or wider.
        """
        N, L, _ = z.shape
        partner, valid, head = window_partners(L, self.window, self.stride, self.n_heads, z.device)
        u = z.to(torch.promote_types(z.dtype, torch.float32))
        zs = u[:, partner]  # (N, L, K, r)
        ok = valid.expand(N, -1, -1)
        if pad_mask is not None:
            real = pad_mask.bool()
            ok = ok & real[:, partner] & real[:, :, None]
        # As in the LM mixer (mixer/fast.py): u ∧ v = u ∧ v_perp with v_perp = v - (u.v/|u|^2) u,
        # and |u ∧ v|^2 = |u|^2 |v_perp|^2 has none of the cancellation of Lagrange's
        # |u|^2 |v|^2 - (u.v)^2 for nearly parallel tokens. |p| is clamped at eps as there.
        uu = (u * u).sum(-1, keepdim=True)  # (N, L, 1)
        along = torch.einsum("nlr,nlkr->nlk", u, zs) / uu.clamp_min(torch.finfo(u.dtype).tiny)
        zs = zs - along.unsqueeze(-1) * u.unsqueeze(2)
        n2 = uu * (zs * zs).sum(-1)
        inv_norm = n2.clamp_min(self.cfg.norm_eps**2).rsqrt()
        in_head = ok.unsqueeze(-1) & (head.unsqueeze(-1) == torch.arange(self.n_heads, device=z.device))
        in_head = in_head.to(u.dtype)  # (N, L, K, H)
        count = in_head.sum(2)  # (N, L, H) pairs per head
        c = in_head * inv_norm.unsqueeze(-1) / count.clamp_min(1).unsqueeze(2)
        return zs, c, (count > 0).to(u.dtype)

    def features(self, z: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """g: (N, L, d) from reduced tokens z: (N, L, r); heads fill consecutive slices."""
        zs, c, nonempty = self.pair_weights(z, pad_mask)
        r = z.shape[-1]
        w = torch.einsum("nlkh,nlkr->nlhr", c, zs).to(z.dtype)  # (N, L, H, r)
        outer = (z.unsqueeze(-2).unsqueeze(-1) * w.unsqueeze(-2)).flatten(-2)  # z_t w_{t,h}^T
        W, b = self.proj[0].weight, self.proj[0].bias
        A = (W @ self.antisym).view(self.n_heads, -1, r * r)  # head h: rows of its slice
        g = torch.einsum("nlhq,hdq->nlhd", outer, A) + b.view(self.n_heads, -1) * nonempty.unsqueeze(-1)
        return g.flatten(-2).to(z.dtype)

    def mean_pluecker(self, z: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per head, the mean normalised Plücker vector at each token, formed explicitly.

        z: (N, L, r). Returns (N, L, H, r(r-1)/2); `features` equals head h's rows of
        W_plü applied to slice h (plus bias where nonempty). For inspection and tests.
        """
        zs, c, _ = self.pair_weights(z, pad_mask)
        u = z.to(zs.dtype).unsqueeze(2).expand_as(zs)
        return torch.einsum("nlkh,nlkp->nlhp", c, pluecker(u, zs))


def _paper_block(d_model: int, d_ff: int, dropout: float, mixer: nn.Module) -> Block:
    """The paper's post-LN Grassmann block (Block "paper_postln") around `mixer`."""
    cfg = ModelConfig(kind="grassmann", d_model=d_model, d_ff=d_ff, dropout=dropout,
                      block="paper_postln", causal=False)
    return Block(cfg, layer=0, mixer=mixer)


class TokenProjection(nn.Module):
    """Backbone features (B, L, in_dim) -> (B, L, d): Linear, + position (+ segment), dropout.

    Positions restart at 0 in each sentence; the segment embedding (if n_segments > 0)
    tells premise tokens from hypothesis tokens once they share one sequence.
    """

    def __init__(self, in_dim: int, d_model: int, n_positions: int, n_segments: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        self.pos = nn.Embedding(n_positions, d_model)
        self.seg = nn.Embedding(n_segments, d_model) if n_segments else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, segment: int = 0) -> torch.Tensor:
        L = x.shape[1]
        if L > self.pos.num_embeddings:
            raise ValueError(f"sentence length {L} exceeds n_positions={self.pos.num_embeddings}")
        h = self.proj(x.to(self.proj.weight.dtype)) + self.pos(torch.arange(L, device=x.device))
        if self.seg is not None:
            h = h + self.seg.weight[segment]
        return self.drop(h)


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad dim 1 of x (B, L, ...) with zeros to `length`."""
    pad = [0, 0] * (x.dim() - 2) + [0, length - x.shape[1]]
    return F.pad(x, pad)


def _check_encoding(encoding: str) -> None:
    if encoding not in ("separate", "pair"):
        raise ValueError(f"encoding={encoding!r}: expected 'separate' or 'pair'")


def _check_inputs(encoding: str, hypothesis: torch.Tensor | None) -> None:
    if encoding == "pair" and hypothesis is not None:
        raise ValueError("encoding='pair' takes one pair sequence in the premise slot (hypothesis=None)")
    if encoding == "separate" and hypothesis is None:
        raise ValueError("encoding='separate' takes a premise and a hypothesis")


def pair_mlp(d_model: int, dropout: float, encoding: Encoding) -> nn.Sequential:
    """The siamese classifier: MLP on [u; v; |u-v|; u*v] (B, 4d) ("separate") or on the pooled
    pair (B, d) ("pair"): Linear -> GELU -> Dropout -> Linear to 3 logits."""
    n_in = 4 * d_model if encoding == "separate" else d_model
    return nn.Sequential(nn.Linear(n_in, d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, N_CLASSES))


def siamese_logits(
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], classifier: nn.Module,
    premise: torch.Tensor, premise_mask: torch.Tensor, hypothesis: torch.Tensor, hypothesis_mask: torch.Tensor,
) -> torch.Tensor:
    """classifier([u; v; |u-v|; u*v]) with u, v = encode(sentence (B, L, in), mask (B, L)) -> (B, d),
    both sentences in one batch through the shared weights. Returns (B, 3)."""
    L = max(premise.shape[1], hypothesis.shape[1])
    x = torch.cat([_pad_to(premise, L), _pad_to(hypothesis, L)])
    mask = torch.cat([_pad_to(premise_mask, L), _pad_to(hypothesis_mask, L)])
    u, v = encode(x, mask).chunk(2)
    return classifier(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))


class GrassmannPluckerHead(nn.Module):
    """(premise (B, Lp, in), mask, hypothesis (B, Lh, in), mask) -> logits (B, 3).

    Each sentence alone (shared weights): project to d_model, add positions, then
    `n_layers` paper blocks with `WindowGrassmannMixer` (reduced dim 64, windows of 8
    with stride 8, 4 mixing heads, FFN d_ff, dropout), masked mean pooling -> u, v.
    The classifier MLP sees [u; v; |u-v|; u*v] ("separate") or the pooled pair ("pair").
    """

    def __init__(
        self, in_dim: int = 768, d_model: int = 256, reduced_dim: int = 64, window: int = 8,
        stride: int = 8, n_layers: int = 2, n_heads: int = 4, d_ff: int = 512,
        dropout: float = 0.1, norm_eps: float = 1e-6, n_positions: int = 128,
        encoding: Encoding = "separate",
    ) -> None:
        super().__init__()
        _check_encoding(encoding)
        self.encoding = encoding
        self.n_layers = n_layers
        self.embed = TokenProjection(in_dim, d_model, n_positions, 0, dropout)
        self.layers = nn.ModuleList(
            _paper_block(d_model, d_ff, dropout,
                         WindowGrassmannMixer(d_model, reduced_dim, window, stride, n_heads, norm_eps))
            for _ in range(n_layers)
        )
        self.classifier = pair_mlp(d_model, dropout, encoding)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sentence vectors (B, d) from features x: (B, L, in) and mask (B, L)."""
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h, mask)
        return masked_mean(h, mask)

    def forward(
        self, premise: torch.Tensor, premise_mask: torch.Tensor,
        hypothesis: torch.Tensor | None = None, hypothesis_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_inputs(self.encoding, hypothesis)
        if hypothesis is None:
            return self.classifier(self.encode(premise, premise_mask))
        return siamese_logits(self.encode, self.classifier, premise, premise_mask, hypothesis, hypothesis_mask)

    @torch.no_grad()
    def pluecker_features(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the mean normalised Plücker vector of every token and mixing head.

        x: (B, L, in) one sentence's features; mask: (B, L). Returns n_layers tensors
        (B, L, n_heads, C(r, 2)), the Plücker input of each layer's mixer.
        """
        h, out = self.embed(x), []
        for layer in self.layers:
            out.append(layer.mixer.mean_pluecker(layer.mixer.reduce(h), mask))
            h = layer(h, mask)
        return out


# ----------------------------------------------------------------------------- Transformer head


class TransformerHead(nn.Module):
    """(premise (B, Lp, in), mask, hypothesis (B, Lh, in), mask) -> logits (B, 3).

    Project to d_model and add positions, then `n_layers` pre-LN bidirectional attention
    blocks with a key-padding mask, a final LayerNorm and masked mean pooling.
    combine="joint": a premise/hypothesis segment embedding, both token sequences
        concatenated so attention relates the sentences, dropout, a linear classifier.
    combine="siamese": each sentence alone through the shared blocks, then the Grassmann
        head's classifier, an MLP on [u; v; |u-v|; u*v] (`pair_mlp`): the control that
        differs from `GrassmannPluckerHead` only in the token mixer (needs "separate").
    d_ff=None takes `MATCHED_D_FF`: the Grassmann head's parameter count within 1% at the
    default sizes. attn_dropout: dropout on the attention probabilities (0, as for the LM
    presets: the Grassmann head has no such site).
    """

    # "pair" is the joint head on the pair encoding (the Grassmann head's classifier is smaller there).
    MATCHED_D_FF = {"joint": 1536, "pair": 1344, "siamese": 1280}

    def __init__(
        self, in_dim: int = 768, d_model: int = 256, n_layers: int = 2, n_heads: int = 4,
        d_ff: int | None = None, dropout: float = 0.1, attn_dropout: float = 0.0, n_positions: int = 128,
        encoding: Encoding = "separate", combine: Combine = "joint",
    ) -> None:
        super().__init__()
        _check_encoding(encoding)
        if combine not in ("joint", "siamese"):
            raise ValueError(f"combine={combine!r}: expected 'joint' or 'siamese'")
        if combine == "siamese" and encoding == "pair":
            raise ValueError("combine='siamese' encodes the two sentences apart: it needs encoding='separate'")
        self.encoding, self.combine, self.n_layers = encoding, combine, n_layers
        d_ff = self.MATCHED_D_FF["pair" if encoding == "pair" else combine] if d_ff is None else d_ff
        self.embed = TokenProjection(in_dim, d_model, n_positions, 2 if combine == "joint" else 0, dropout)
        cfg = ModelConfig(kind="transformer", d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                          dropout=dropout, attn_dropout=attn_dropout, block="preln", causal=False)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        if combine == "siamese":
            self.classifier = pair_mlp(d_model, dropout, encoding)
        else:
            self.drop = nn.Dropout(dropout)
            self.classifier = nn.Linear(d_model, N_CLASSES)

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embedded tokens x (B, L, d), mask (B, L) -> blocks, final LN, masked mean (B, d)."""
        for block in self.blocks:
            x = block(x, mask)
        return masked_mean(self.norm(x), mask)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One sentence alone: sentence vectors (B, d) from features x (B, L, in), mask (B, L)."""
        return self.pool(self.embed(x), mask)

    def forward(
        self, premise: torch.Tensor, premise_mask: torch.Tensor,
        hypothesis: torch.Tensor | None = None, hypothesis_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_inputs(self.encoding, hypothesis)
        if self.combine == "siamese":
            return siamese_logits(self.encode, self.classifier, premise, premise_mask, hypothesis, hypothesis_mask)
        x, mask = self.embed(premise, segment=0), premise_mask
        if hypothesis is not None:
            x = torch.cat([x, self.embed(hypothesis, segment=1)], dim=1)
            mask = torch.cat([premise_mask, hypothesis_mask], dim=1)
        return self.classifier(self.drop(self.pool(x, mask)))


HEADS: dict[str, type[nn.Module]] = {"transformer": TransformerHead, "grassmann": GrassmannPluckerHead}


def build_head(kind: str, in_dim: int = 768, encoding: Encoding = "separate", **options) -> nn.Module:
    """A head by name ("transformer" | "grassmann"); options are its constructor's arguments."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}: expected one of {', '.join(HEADS)}")
    return HEADS[kind](in_dim=in_dim, encoding=encoding, **options)


# ----------------------------------------------------------------------------- backbone + head


class DistilBertNLI(nn.Module):
    """Token ids -> logits (B, 3): DistilBERT features, then a head.

    forward(premise_ids (B, Lp), premise_mask, hypothesis_ids (B, Lh), hypothesis_mask);
    with the head's encoding "pair", forward(input_ids, attention_mask) of the pair.
    freeze_backbone: no gradients into DistilBERT and it stays in eval mode (no
    dropout) under .train(), so its features equal the cached ones.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, freeze_backbone: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.encoding: Encoding = head.encoding
        self.freeze_backbone = freeze_backbone
        backbone.requires_grad_(not freeze_backbone)
        self.train(self.training)

    def train(self, mode: bool = True) -> "DistilBertNLI":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Contextual token features (B, L, dim) of ids (B, L) with attention mask (B, L)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            return self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state

    def forward(
        self, premise_ids: torch.Tensor, premise_mask: torch.Tensor,
        hypothesis_ids: torch.Tensor | None = None, hypothesis_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_inputs(self.encoding, hypothesis_ids)
        if hypothesis_ids is None:
            return self.head(self.features(premise_ids, premise_mask), premise_mask)
        # One backbone call for both sentences, each still encoded on its own.
        Lp, Lh = premise_ids.shape[1], hypothesis_ids.shape[1]
        L = max(Lp, Lh)
        ids = torch.cat([_pad_to(premise_ids, L), _pad_to(hypothesis_ids, L)])
        mask = torch.cat([_pad_to(premise_mask, L), _pad_to(hypothesis_mask, L)])
        p, h = self.features(ids, mask).chunk(2)
        return self.head(p[:, :Lp], premise_mask, h[:, :Lh], hypothesis_mask)


def build_snli_model(
    head: str, backbone: str | nn.Module = DEFAULT_BACKBONE, *, finetune_backbone: bool = False,
    encoding: Encoding = "separate", local_files_only: bool | None = None, **head_options,
) -> DistilBertNLI:
    """DistilBertNLI with `head` ("transformer" | "grassmann") on `backbone`.

    backbone: a hub name or local directory (see `load_backbone`) or a loaded model.
    The head's input width is the backbone's hidden size (768 for DistilBERT-base).
    """
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, local_files_only=local_files_only)
    model_head = build_head(head, in_dim=backbone.config.dim, encoding=encoding, **head_options)
    return DistilBertNLI(backbone, model_head, freeze_backbone=not finetune_backbone)


def nli_inputs(
    batch: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Positional inputs for DistilBertNLI or a head from any SNLI batch.

    Token batches (data.snli): premise_ids/... ("separate") or input_ids/attention_mask
    ("pair"). Cached feature batches (data.distilbert_features): premise/... .
    """
    if "input_ids" in batch:
        return batch["input_ids"], batch["attention_mask"], None, None
    ids = "_ids" if "premise_ids" in batch else ""
    return (batch[f"premise{ids}"], batch["premise_mask"],
            batch.get(f"hypothesis{ids}"), batch.get("hypothesis_mask"))
