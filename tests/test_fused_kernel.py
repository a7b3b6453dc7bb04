"""The fused Triton wedge projection inside the mixer and the model, against the naive path.

The op itself (every implementation against the Plücker reference) is tested in
tests/ops/test_wedge_project.py. Without CUDA the kernels run on CPU tensors through
Triton's interpreter (conftest sets TRITON_INTERPRET=1 before anything imports Triton);
on a CUDA machine the same tests run the compiled kernels.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import check_features_against_naive, compare_models

pytest.importorskip("triton", reason="the fused kernel is written in Triton, which is not installed")

from grassmann_flows.models import build_model  # noqa: E402
from grassmann_flows.models.config import MixerConfig  # noqa: E402
from grassmann_flows.models.mixer import GrassmannMixer, resolve_impl  # noqa: E402
from grassmann_flows.ops.wedge_project import wedge_project_fused  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

MIXER_CASES = {
    "paper": MixerConfig(reduced_dim=8),
    "average_first_sum_bias": MixerConfig(
        reduced_dim=8, norm_order="average_first", aggregation="sum", empty_value="bias"
    ),
    "sqrt_add_sum": MixerConfig(reduced_dim=8, norm_form="sqrt_add", aggregation="sum"),
}


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=lambda t: str(t).removeprefix("torch."))
def test_mixer_features_vs_naive(case: str, dtype: torch.dtype) -> None:
    """fast_features with the fused projection vs the literal per-offset reference."""
    tol = 1e-10 if dtype == torch.float64 else 1e-4  # float32 also carries the norms' rounding
    check_features_against_naive(wedge_project_fused, MIXER_CASES[case], dtype, DEVICE, tol)


def test_model_fused_vs_naive() -> None:
    """GrassmannLM with mixer_impl='fused' equals 'naive': logits and every parameter gradient.

    L = 20 < 16 + 5 so the first tokens pair with only some of (1, 2, 4, 8, 12, 16).
    """
    opts = dict(
        n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=97, n_positions=24,
        reduced_dim=8, dropout=0.0,
    )
    fused = build_model("grassmann", mixer_impl="fused", **opts).to(DEVICE, torch.float64)
    naive = build_model("grassmann", mixer_impl="naive", **opts).to(DEVICE, torch.float64)
    naive.load_state_dict(fused.state_dict())
    assert all(blk.mixer.mixer_impl == "fused" for blk in fused.backbone.blocks)
    assert resolve_impl(fused.cfg.mixer) == "fused"
    ids = torch.randint(0, opts["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    compare_models(fused, naive, ids, tol=1e-10, grad_tol=1e-8)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_mixer_takes_the_kernel_only_where_it_runs(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """mixer_impl='fused' calls the Triton kernel on CUDA tensors, and on the CPU only under
    Triton's interpreter; a CPU without it runs the PyTorch form. Outputs equal 'fast' throughout."""
    import grassmann_flows.ops.wedge_project as wp

    calls: list[str] = []

    def spy(u: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        calls.append(u.device.type)
        return wedge_project_fused(u, w, weight)

    monkeypatch.setattr(wp, "wedge_project_fused", spy, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = MixerConfig(reduced_dim=8, mixer_impl="fused")
    fused = GrassmannMixer(16, cfg, (1, 2, 4)).to(device, torch.float64)
    fast = GrassmannMixer(16, replace(cfg, mixer_impl="fast"), (1, 2, 4)).to(device, torch.float64)
    fast.load_state_dict(fused.state_dict())
    assert (fused.mixer_impl, fast.mixer_impl) == ("fused", "fast")  # chosen when built
    h = torch.randn(2, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    expected = fast(h)
    torch.testing.assert_close(fused(h), expected, rtol=0, atol=1e-12)
    assert calls == (["cuda"] if device == "cuda" else [])
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        torch.testing.assert_close(fused(h), expected, rtol=0, atol=1e-10)
        assert calls == ["cpu"]
