"""Streaming state of one causal Grassmann layer: the last max|offset| reduced vectors.

Position t's features g_t depend on z_t and on its partners z_{t-Delta}, Delta in the
layer's offsets, and on nothing else (paper §3.2 with past pairing). Decoding the next
token therefore needs only the last W = max Delta reduced vectors of the layer, r floats
each, however long the context is: W * r numbers per sequence per layer, against the
2 * t * d of a Transformer's KV cache at position t.

The step runs the mixer's own feature code (`GrassmannMixer.features`) on the window
[W kept vectors; T new ones], with the slots not filled yet (the first W - t positions
of a sequence) masked as padding, and projects only the T new positions, through the
explicit Plücker coordinates: for a few tokens that is cheaper than forming the GEMM
form's A = W S (d x r*r), which training amortises over a whole batch. Everything
after the features (gate, blend, projections, norms, block layout) is the full
forward's code, so every option streams exactly as it trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


Projections = tuple[list[torch.Tensor], list[torch.Tensor]]


@dataclass
class RingState:
    """The window of one layer: z (B, W, r), slot W-1 the newest position; seen: positions so far.

    Slots not filled yet hold zeros and are masked out, so the state has the same size
    at every position. projections: the mixer's effective (W_plü, b_plü) lists, computed
    once for the whole decoding (weights, not per-sequence state: `nbytes` leaves them out).
    """

    z: torch.Tensor
    projections: Projections
    seen: int = 0

    @classmethod
    def empty(cls, batch: int, offsets: tuple[int, ...], reduced_dim: int,
              device: torch.device, dtype: torch.dtype, projections: Projections) -> "RingState":
        """The state before the first token, for a layer pairing over `offsets` (signed).

        Raises ValueError with the reason for a layer that pairs with the future.
        """
        if any(o <= 0 for o in offsets):
            raise ValueError(
                "this model pairs tokens with future positions (pairing='future_literal' or 'both'): "
                "position t's features need tokens after t, so it cannot generate one token at a time"
            )
        return cls(torch.zeros(batch, max(offsets), reduced_dim, device=device, dtype=dtype), projections)

    def window(self, z_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the T new reduced vectors z_new: (B, T, r); keep the last W.

        Returns the window (B, W + T, r) the features are computed on and its mask
        (1, W + T), 1.0 at real positions and 0.0 at slots not filled yet.
        """
        W, T = self.z.shape[1], z_new.shape[1]
        win = torch.cat([self.z, z_new.to(self.z.dtype)], dim=1)
        n_real = min(self.seen, W) + T
        mask = (torch.arange(W + T, device=win.device) >= W + T - n_real).to(win.dtype)[None]
        self.z.copy_(win[:, T:])  # in place: the state keeps one fixed buffer
        self.seen += T
        return win, mask

    def nbytes(self) -> int:
        return self.z.numel() * self.z.element_size()


def project_last(project: Callable[..., torch.Tensor], last: int) -> Callable[..., torch.Tensor]:
    """`project` (u, w, weight, ...) -> (B, L, d) restricted to the last `last` positions.

    Zeros stand in for the window's first positions: the step discards them, and
    projecting them would spend the largest product on W extra rows per token.
    """

    def projected(u: torch.Tensor, w: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        y = project(u[:, -last:], w[:, -last:], *rest)
        return F.pad(y, (0, 0, u.shape[1] - last, 0))

    return projected
