"""The Causal Grassmann mixing layer (paper §3.2) with its three implementations."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..config import MixerConfig
import os

from ...ops.wedge_project import antisymmetrizer, wedge_project
from .fast import fast_features
from .naive import naive_features

__all__ = ["GrassmannMixer", "resolve_impl"]


def resolve_impl(cfg: MixerConfig) -> str:
    """The implementation that will actually run for `cfg`, warning on a fallback.

    The collapsed rewrite needs one projection shared by all offsets; per-offset
    projections run the naive path. "fused" needs Triton; without it, "fast" runs.
    """
    impl = cfg.impl
    if impl != "naive" and cfg.projection == "per_offset":
        warnings.warn("projection='per_offset' has no collapsed form: using mixer_impl='naive'")
        return "naive"
    if impl == "fused":
        from ...ops.wedge_project import triton_available

        if not triton_available():
            warnings.warn("mixer_impl='fused' needs Triton, which is not installed: using 'fast'")
            return "fast"
    return impl


class GrassmannMixer(nn.Module):
    """h (B, L, d) -> mixed h (B, L, d): reduce, pair, Plücker, project, gate.

    Steps (paper §3.2): z = W_red h + b; g = aggregate over valid offsets of
    W_plü p_hat(z_t, z_{t-Delta}) + b_plü; alpha = sigmoid(W_gate [h; g] + b);
    blend alpha*h + (1-alpha)*g (or h + alpha*g). Optional extra d x d projection
    (in or out) and a LayerNorm inside the mixer, per `MixerConfig`.
    """

    def __init__(self, d_model: int, cfg: MixerConfig, offsets: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.offsets = offsets
        self.impl = resolve_impl(cfg)
        P = cfg.n_pluecker
        self.in_proj = nn.Linear(d_model, d_model) if cfg.extra_proj == "in" else None
        self.reduce = nn.Linear(d_model, cfg.reduced_dim)
        n_proj = len(offsets) if cfg.projection == "per_offset" else 1
        self.proj = nn.ModuleList(nn.Linear(P, d_model) for _ in range(n_proj))
        self.gate = nn.Linear(2 * d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model) if cfg.extra_proj == "out" else None
        self.norm = nn.LayerNorm(d_model) if cfg.mixer_norm else None
        self.register_buffer("antisym", antisymmetrizer(cfg.reduced_dim), persistent=False)

    def features(self, z: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """g: (B, L, d) from reduced tokens z: (B, L, r) with the chosen implementation."""
        if self.impl == "naive":
            return naive_features(
                z, [p.weight for p in self.proj], [p.bias for p in self.proj],
                self.offsets, self.cfg, pad_mask,
            )
        def project(u: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return wedge_project(u, w, weight, self.antisym)

        # Triton kernels run on CUDA, or on the CPU only through its interpreter.
        if self.impl == "fused" and (z.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
            from ...ops.wedge_project import wedge_project_fused as project
        return fast_features(
            z, self.proj[0].weight, self.proj[0].bias, self.offsets, self.cfg, pad_mask, project
        )

    def forward(self, h: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B, L, d); pad_mask: (B, L) nonzero for real tokens, or None."""
        if self.in_proj is not None:
            h = self.in_proj(h)
        g = self.features(self.reduce(h), pad_mask)
        alpha = torch.sigmoid(self.gate(torch.cat([h, g], dim=-1)))
        if self.cfg.gate_output == "blend":
            out = alpha * h + (1 - alpha) * g
        else:
            out = h + alpha * g
        if self.out_proj is not None:
            out = self.out_proj(out)
        if self.norm is not None:
            out = self.norm(out)
        return out
