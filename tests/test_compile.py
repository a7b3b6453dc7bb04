"""torch.compile must see each model as one graph: a graph break in the mixer would cost
the GPU runs their fusion and CUDA graphs. Tracing only (no code generation), so it is cheap."""

from __future__ import annotations

import pytest
import torch

from grassmann_flows.models import build_model


@pytest.mark.parametrize("kind,preset", [("transformer", "paper"), ("grassmann", "paper"),
                                         ("grassmann", "preln_all_offsets"), ("grassmann", "preln_per_layer")])
def test_model_traces_without_graph_breaks(kind: str, preset: str) -> None:
    torch._dynamo.reset()
    model = build_model(kind, preset, n_layers=6, n_positions=32, d_model=32, d_ff=64, n_heads=2,
                        vocab_size=100).eval()
    x = torch.randint(0, 100, (2, 32))
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_break_count == 0
