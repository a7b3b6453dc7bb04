"""The Causal Grassmann mixing layer (paper §3.2) with its three implementations.

The implementation (`MixerConfig.mixer_impl`: naive, fast or fused) is chosen once, when
the layer is built (`resolve_impl`); `forward` only runs it.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

from ...ops.wedge_project import antisymmetrizer, triton_available, wedge_project, wedge_project_reference
from ..config import MixerConfig
from .fast import fast_features
from .naive import naive_features
from .stream import RingState, project_last

__all__ = ["GrassmannMixer", "RingState", "fused_kernel_runs_on", "resolve_impl"]


def resolve_impl(cfg: MixerConfig) -> str:
    """The implementation that will actually run for `cfg`, warning on a fallback.

    The collapsed rewrite needs one projection shared by all offsets; per-offset
    projections run the naive path. "fused" needs Triton; without it, "fast" runs.
    """
    impl = cfg.mixer_impl
    if impl != "naive" and cfg.projection == "per_offset":
        warnings.warn("projection='per_offset' has no collapsed form: using mixer_impl='naive'")
        return "naive"
    if impl == "fused":
        if not triton_available():
            warnings.warn("mixer_impl='fused' needs Triton, which is not installed: using 'fast'")
            return "fast"
    return impl


def fused_kernel_runs_on(x: torch.Tensor) -> bool:
    """Whether mixer_impl="fused" runs its Triton kernel on `x`: on CUDA tensors, or on the
    CPU only through Triton's interpreter (TRITON_INTERPRET=1, as the CPU tests do).

    Elsewhere (a "fused" model moved to the CPU) the PyTorch form runs; it computes the
    same function, so the choice changes speed, never results.
    """
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


class GrassmannMixer(nn.Module):
    """h (B, L, d) -> mixed h (B, L, d): reduce, pair, Plücker, project, gate.

    Steps (paper §3.2): z = W_red h + b; g = aggregate over valid offsets of
    W_plü p_hat(z_t, z_{t-Delta}) + b_plü; alpha = sigmoid(W_gate [h; g] + b);
    blend alpha*h + (1-alpha)*g (or h + alpha*g). Optional extra d x d projection
    (of g, of the input or of the output) and a LayerNorm inside the mixer, per `MixerConfig`.
    """

    def __init__(self, d_model: int, cfg: MixerConfig, offsets: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.offsets = offsets
        self.mixer_impl = resolve_impl(cfg)  # fixed for the layer's life: `forward` never re-chooses
        P = cfg.n_pluecker
        self.in_proj = nn.Linear(d_model, d_model) if cfg.extra_proj == "in" else None
        self.reduce = nn.Linear(d_model, cfg.reduced_dim)
        n_proj = len(offsets) if cfg.projection == "per_offset" else 1
        self.proj = nn.ModuleList(nn.Linear(P, d_model) for _ in range(n_proj))
        self.g_proj = nn.Linear(d_model, d_model) if cfg.extra_proj == "g" else None
        self.gate = nn.Linear(2 * d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model) if cfg.extra_proj == "out" else None
        self.norm = nn.LayerNorm(d_model) if cfg.mixer_norm else None
        self.register_buffer("antisym", antisymmetrizer(cfg.reduced_dim), persistent=False)

    def projections(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The effective (W_plü (d, P), b_plü (d,)) of each projection, one per projection.

        With extra_proj="g" the Linear on g is folded in: W_g W_plü and W_g b_plü + b_g.
        Every projected term W_plü p_hat + b_plü is then mapped by W_g x + b_g before the
        aggregation, which for the mean equals W_g g + b_g wherever an offset is valid,
        and keeps g_t = 0 (empty_value="zero") where none is: the paper's equations with
        W_plü factorised, not a new function. Costs one (d, d) x (d, P) product per call.
        """
        weights = [p.weight for p in self.proj]
        biases = [p.bias for p in self.proj]
        if self.g_proj is None:
            return weights, biases
        return [self.g_proj.weight @ w for w in weights], [self.g_proj(b) for b in biases]

    def features(
        self, z: torch.Tensor, pad_mask: torch.Tensor | None = None, last: int | None = None,
        projections: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """g: (B, L, d) from reduced tokens z: (B, L, r) with the chosen implementation.

        last: return only the last `last` positions, (B, last, d), projecting only those
        (the streaming step, whose z is a window of kept and new tokens).
        projections: `self.projections()` computed once (the streaming state keeps them).
        """
        weights, biases = self.projections() if projections is None else projections
        if self.mixer_impl == "naive":
            g = naive_features(z, weights, biases, self.offsets, self.cfg, pad_mask)
            return g if last is None else g[:, -last:]
        # A few tokens (the streaming step): the Plücker form needs no A = W S (r*r x d) per step.
        project = self.wedge if last is None else project_last(wedge_project_reference, last)
        g = fast_features(z, weights[0], biases[0], self.offsets, self.cfg, pad_mask, project)
        return g if last is None else g[:, -last:]

    def wedge(self, u: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """W (u ∧ w): (..., d) from u, w: (..., r) and weight: (d, P), by this layer's implementation.

        "fused" runs the Triton kernel where `fused_kernel_runs_on(u)`, the PyTorch form elsewhere.
        """
        if self.mixer_impl == "fused" and fused_kernel_runs_on(u):
            from ...ops.wedge_project import wedge_project_fused  # imports Triton on first use only

            return wedge_project_fused(u, w, weight)
        return wedge_project(u, w, weight, self.antisym)

    def new_state(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> RingState:
        """The streaming state before the first token; its size does not depend on `capacity`.

        It keeps `projections()` as they are now: a decoding step then does not refold
        extra_proj="g" into W_plü, which would cost more than the rest of the step.
        """
        return RingState.empty(batch, self.offsets, self.cfg.reduced_dim, device, dtype, self.projections())

    def forward(
        self, h: torch.Tensor, pad_mask: torch.Tensor | None = None, state: RingState | None = None
    ) -> torch.Tensor:
        """h: (B, L, d); pad_mask: (B, L) nonzero for real tokens, or None.

        state: the window of the previous positions; h are then the next L positions.
        """
        if self.in_proj is not None:
            h = self.in_proj(h)
        z = self.reduce(h)
        if state is None:
            g = self.features(z, pad_mask)
        else:
            g = self.features(*state.window(z), last=z.shape[1], projections=state.projections)
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
