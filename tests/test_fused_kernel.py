"""The fused Triton wedge projection against the PyTorch references, forward and backward.

On a machine without CUDA the kernels run on CPU tensors through Triton's interpreter,
which must be switched on before the kernel module is imported (Triton picks interpreted
or compiled when a kernel is decorated); on a CUDA machine the same tests run the
compiled kernels.
Shapes are small so the interpreter keeps the file under a couple of minutes; the
interpreter's block sizes (32 tokens, 32 outputs) make them span several ragged blocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="the fused kernel is written in Triton, which is not installed")

from grassmann_flows.kernels import wedge_project_fused  # noqa: E402
from grassmann_flows.kernels.wedge_project import INTERPRET  # noqa: E402
from grassmann_flows.models import build_model  # noqa: E402
from grassmann_flows.models.config import MixerConfig  # noqa: E402
from grassmann_flows.models.mixer import resolve_impl  # noqa: E402
from grassmann_flows.models.mixer.fast import fast_features  # noqa: E402
from grassmann_flows.models.mixer.naive import naive_features, wedge_project_reference  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip(
        "grassmann_flows.kernels.wedge_project was imported without TRITON_INTERPRET=1 before this "
        "module, so its kernels are compiled ones, and there is no GPU to run them",
        allow_module_level=True,
    )
REPO_ROOT = Path(__file__).resolve().parents[1]

# Largest |error| over largest |reference| that each compute dtype may reach.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def err_ratio(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    ratio = err_ratio(actual, expected)
    assert ratio <= tol, f"{name}: error ratio {ratio:.3e} > {tol:.0e}"


def make_inputs(
    lead: tuple[int, ...], r: int, d: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, w: (*lead, r); weight: (d, P); dy: (*lead, d), all leaves on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*lead, r, generator=g)
    w = torch.randn(*lead, r, generator=g)
    weight = torch.randn(d, r * (r - 1) // 2, generator=g) / r
    dy = torch.randn(*lead, d, generator=g)
    return tuple(t.to(DEVICE, dtype).requires_grad_(t is not dy) for t in (u, w, weight, dy))


def check_against_reference(lead: tuple[int, ...], r: int, d: int, dtype: torch.dtype) -> None:
    """Fused output and (u, w, weight) gradients vs the Plücker reference in float64.

    The reference runs on the same (rounded) inputs in float64, so the error measured
    is the kernel's own: operand rounding of u w^T, accumulation, output rounding.
    """
    u, w, weight, dy = make_inputs(lead, r, d, dtype)
    y = wedge_project_fused(u, w, weight)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, (u, w, weight), dy)
    leaves = [t.detach().double().requires_grad_() for t in (u, w, weight)]
    y_ref = wedge_project_reference(*leaves)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.double())
    assert_close("y", y, y_ref, TOL[dtype])
    for name, g, g_ref in zip(("du", "dw", "dweight"), grads, grads_ref):
        assert g.dtype == dtype
        assert_close(name, g, g_ref, TOL[dtype])


@pytest.mark.parametrize("N", [1, 7, 33, 257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wedge_project_odd_n(N: int, dtype: torch.dtype) -> None:
    check_against_reference((N,), r=8, d=48, dtype=dtype)


@pytest.mark.parametrize(
    "lead, r, d",
    [
        ((2, 3, 11), 8, 40),  # leading dims, 66 tokens
        ((3, 13), 5, 20),  # r not a power of two: padded r-columns and a ragged i-block
        ((2, 9), 20, 33),  # r > 16 not a power of two, d not a multiple of the block
    ],
)
def test_wedge_project_shapes(lead: tuple[int, ...], r: int, d: int) -> None:
    check_against_reference(lead, r, d, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_wedge_project_dtypes(dtype: torch.dtype) -> None:
    check_against_reference((2, 17), r=8, d=24, dtype=dtype)


def test_wedge_project_paper_size() -> None:
    """r = 32 (P = 496), d = 256 as in the paper."""
    check_against_reference((2, 19), r=32, d=256, dtype=torch.float32)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_wedge_project_autocast(input_dtype: torch.dtype) -> None:
    """Under autocast the inputs run in the autocast dtype, as for F.linear.

    bfloat16 u, w with a float32 weight is what the mixer passes under bf16 autocast.
    """
    u, w, weight, dy = make_inputs((3, 10), r=8, d=24, dtype=torch.float32)
    u, w = (t.detach().to(input_dtype).requires_grad_() for t in (u, w))
    dtype = torch.bfloat16
    with torch.autocast(DEVICE, dtype=dtype):
        y = wedge_project_fused(u, w, weight)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, (u, w, weight), dy.to(dtype))
    assert [g.dtype for g in grads] == [input_dtype, input_dtype, torch.float32]  # the leaves' dtypes
    leaves = [t.detach().to(dtype).double().requires_grad_() for t in (u, w, weight)]
    y_ref = wedge_project_reference(*leaves)
    assert_close("y", y, y_ref, TOL[dtype])
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.to(dtype).double())
    for name, g, g_ref in zip(("du", "dw", "dweight"), grads, grads_ref):
        assert_close(name, g, g_ref, TOL[dtype])


def test_wedge_project_empty_and_errors() -> None:
    u, w, weight, _ = make_inputs((0, 3), r=8, d=24, dtype=torch.float32)
    y = wedge_project_fused(u, w, weight)
    assert y.shape == (0, 3, 24)
    y.sum().backward()
    assert weight.grad is not None and not weight.grad.any()
    with pytest.raises(ValueError, match="r\\(r-1\\)/2"):
        wedge_project_fused(u, w, weight[:, :-1])
    with pytest.raises(TypeError, match="dtype mismatch"):
        wedge_project_fused(u, w, weight.double())


def test_cpu_without_interpreter_raises() -> None:
    """Without TRITON_INTERPRET, CPU tensors get a clear error; the package imports no Triton."""
    code = (
        "import sys, torch\n"
        "import grassmann_flows.kernels as k\n"
        "assert 'triton' not in sys.modules, 'importing grassmann_flows.kernels imported triton'\n"
        "u = torch.randn(4, 8)\n"
        "try:\n"
        "    k.wedge_project_fused(u, u, torch.randn(6, 28))\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error on CPU tensors')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


MIXER_CASES = {
    "paper": MixerConfig(reduced_dim=8),
    "average_first_sum_bias": MixerConfig(
        reduced_dim=8, norm_order="average_first", aggregation="sum", empty_value="bias"
    ),
    "sqrt_add_sum": MixerConfig(reduced_dim=8, norm_form="sqrt_add", aggregation="sum"),
}


@pytest.mark.parametrize("case", sorted(MIXER_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixer_features_vs_naive(case: str, dtype: torch.dtype) -> None:
    """fast_features with the fused projection vs the literal per-offset reference.

    L = 21 with offsets up to 16 covers positions with no valid offset (t < min Delta)
    and with only some offsets valid (t < Delta); the padding mask removes partners too.
    """
    cfg = MIXER_CASES[case]
    offsets = (1, 2, 4, 8, 12, 16)
    B, L, d, r = 2, 21, 24, cfg.reduced_dim
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, L, r, generator=g)
    weight = torch.randn(d, cfg.n_pluecker, generator=g) / r
    bias = torch.randn(d, generator=g)
    dg = torch.randn(B, L, d, generator=g)
    pad_mask = torch.ones(B, L)
    pad_mask[1, -3:] = 0
    leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (z, weight, bias)]
    out = fast_features(leaves[0], leaves[1], leaves[2], offsets, cfg, pad_mask.to(DEVICE), wedge_project_fused)
    grads = torch.autograd.grad(out, leaves, dg.to(DEVICE, dtype))
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_mask = pad_mask.double().to(DEVICE)
    ref = naive_features(ref_leaves[0], [ref_leaves[1]], [ref_leaves[2]], offsets, cfg, ref_mask)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dg.double().to(DEVICE))
    tol = 1e-10 if dtype == torch.float64 else 1e-4  # float32 also carries the norms' rounding
    assert_close("g", out, ref, tol)
    for name, gr, gr_ref in zip(("dz", "dweight", "dbias"), grads, ref_grads):
        assert_close(name, gr, gr_ref, tol)


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
    assert all(blk.mixer.impl == "fused" for blk in fused.backbone.blocks)
    assert resolve_impl(fused.cfg.mixer) == "fused"
    ids = torch.randint(0, opts["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    logits = {}
    for name, model in (("fused", fused), ("naive", naive)):
        logits[name] = model(ids)
        torch.nn.functional.cross_entropy(logits[name].flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
    assert_close("logits", logits["fused"], logits["naive"], 1e-10)
    naive_params = dict(naive.named_parameters())
    for name, p in fused.named_parameters():
        assert_close(f"grad {name}", p.grad, naive_params[name].grad, 1e-8)
