"""The wedge projection W (u ∧ w): every implementation against the float64 Plücker reference.

Parametrised over the implementation: `naive` (explicit Plücker coordinates), `torch`
(one GEMM against A = W S) and `triton` (the fused kernels). Without CUDA the Triton
kernels run on CPU tensors through Triton's interpreter (conftest sets TRITON_INTERPRET=1
before anything imports Triton); with CUDA every implementation runs on the GPU.
Shapes are small so the interpreter keeps the file short; its block sizes (32 tokens,
32 outputs) make them span several ragged blocks, and MIN_SPLIT_TOKENS is lowered so
the dA kernel's token splits run too.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import TOL, WedgeProject, assert_close, check_wedge_project, wedge_inputs

from grassmann_flows.ops import wedge_project as op

REPO = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ("naive", "torch", "triton")
SPLIT_TOKENS = 64  # MIN_SPLIT_TOKENS in these tests: N = 257 runs the dA kernel in 5 splits


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, WedgeProject]:
    """(name, function) of one implementation; the Triton one with short token splits."""
    name = request.param
    if name == "naive":
        return name, op.wedge_project_reference
    if name == "torch":
        return name, op.wedge_project
    pytest.importorskip("triton", reason="the fused kernels are written in Triton, which is not installed")
    from grassmann_flows.ops.wedge_project import triton as kernels

    monkeypatch.setattr(kernels, "MIN_SPLIT_TOKENS", SPLIT_TOKENS)
    return name, kernels.wedge_project_fused


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


CASES = [
    # odd N, one token and N spanning several ragged token blocks and dA splits
    *[((N,), 8, 48, dtype) for N in (1, 7, 33, 257) for dtype in (torch.float32, torch.bfloat16)],
    ((2, 3, 11), 8, 40, torch.float32),  # leading dims, 66 tokens
    ((3, 13), 5, 20, torch.float32),  # r not a power of two: padded r-columns and a ragged i-block
    ((2, 9), 20, 33, torch.float32),  # r > 16 not a power of two, d not a multiple of the block
    ((2, 17), 8, 24, torch.float64),
    ((2, 17), 8, 24, torch.float16),
    ((2, 19), 32, 256, torch.float32),  # the paper's r = 32 (P = 496), d = 256
]


@pytest.mark.parametrize(
    ("lead", "r", "d", "dtype"),
    [pytest.param(*c, id="N{}-r{}-d{}-{}".format("x".join(map(str, c[0])), c[1], c[2], dtype_id(c[3])))
     for c in CASES],
)
def test_against_reference(impl: tuple[str, WedgeProject], lead: tuple[int, ...], r: int, d: int,
                           dtype: torch.dtype) -> None:
    check_wedge_project(impl[1], lead, r, d, dtype, DEVICE)


def test_zero_partner_gives_zero(impl: tuple[str, WedgeProject]) -> None:
    """A token with w = 0 (the mixer's t < Delta positions, no valid partner) gets exactly 0."""
    u, w, weight, dy = wedge_inputs((37,), 8, 24, torch.float64, DEVICE)
    empty = torch.zeros(37, 1, dtype=torch.bool, device=DEVICE)
    empty[::3] = True
    w = torch.where(empty, 0.0, w.detach()).requires_grad_()
    y = impl[1](u, w, weight)
    du, = torch.autograd.grad(y, u, dy)
    assert torch.equal(y[empty[:, 0]], torch.zeros_like(y[empty[:, 0]]))
    assert torch.equal(du[empty[:, 0]], torch.zeros_like(du[empty[:, 0]]))
    assert y[~empty[:, 0]].abs().min() > 0


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
def test_autocast(impl: tuple[str, WedgeProject], input_dtype: torch.dtype) -> None:
    """Under bf16 autocast, as in the mixer: the output is bf16 and as close as bf16 allows.

    bfloat16 u, w with a float32 weight is what the mixer passes under bf16 autocast.
    Gradients come back in the leaves' dtypes.
    """
    u, w, weight, dy = wedge_inputs((3, 10), 8, 24, torch.float32, DEVICE)
    u, w = (t.detach().to(input_dtype).requires_grad_() for t in (u, w))
    dtype = torch.bfloat16
    with torch.autocast(DEVICE, dtype=dtype):
        y = impl[1](u, w, weight)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, (u, w, weight), dy.to(dtype))
    assert [g.dtype for g in grads] == [input_dtype, input_dtype, torch.float32]
    leaves = [t.detach().to(dtype).double().requires_grad_() for t in (u, w, weight)]
    y_ref = op.wedge_project_reference(*leaves)
    assert_close("y", y, y_ref, TOL[dtype])
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.to(dtype).double())
    for name, g, g_ref in zip(("du", "dw", "dweight"), grads, grads_ref):
        assert_close(name, g, g_ref, TOL[dtype])


def test_empty_input(impl: tuple[str, WedgeProject]) -> None:
    u, w, weight, _ = wedge_inputs((0, 3), 8, 24, torch.float32, DEVICE)
    y = impl[1](u, w, weight)
    assert y.shape == (0, 3, 24)
    y.sum().backward()
    assert weight.grad is not None and not weight.grad.any()


# ------------------------------------------------------------------ Triton only

triton_only = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


@triton_only
def test_fused_errors() -> None:
    u, w, weight, _ = wedge_inputs((3,), 8, 24, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="r\\(r-1\\)/2"):
        op.wedge_project_fused(u, w, weight[:, :-1])
    with pytest.raises(TypeError, match="dtype mismatch"):
        op.wedge_project_fused(u, w, weight.double())


@triton_only
def test_split_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dA kernel's token splits: at most MAX_SPLITS, each at least MIN_SPLIT_TOKENS."""
    from grassmann_flows.ops.wedge_project import triton as kernels

    assert [kernels.num_splits(n) for n in (0, 1, 2048, 2049, 4999, 10**6)] == [1, 1, 1, 2, 3, 16]
    monkeypatch.setattr(kernels, "MIN_SPLIT_TOKENS", SPLIT_TOKENS)
    assert kernels.num_splits(257) == 5  # test_against_reference's N = 257 runs 5 splits


@triton_only
def test_config_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    """GRASSMANN_FLOWS_KERNEL_CONFIG: its first entry (the default), the whole space, or a one-line error.

    By default every kernel has one config: autotuning picks per process by timing, and the
    weight gradient's sum over tokens is chunked by BLOCK_N, so results would differ between
    runs of the same inputs; it belongs to the benchmark.
    """
    from grassmann_flows.ops.wedge_project import triton as kernels

    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.delenv(kernels.CONFIG_ENV, raising=False)
    assert all(len(kernels._configs(k)) == 1 for k in kernels.SPACE)
    monkeypatch.setenv(kernels.CONFIG_ENV, "autotune")
    assert len(kernels._configs("bwd_uw")) == len(kernels.SPACE["bwd_uw"])
    monkeypatch.setenv(kernels.CONFIG_ENV, "pinned")
    (pinned,) = kernels._configs("fwd")
    bn, bd, nw, ns = kernels.SPACE["fwd"][0]
    assert (pinned.kwargs, pinned.num_warps, pinned.num_stages) == ({"BLOCK_N": bn, "BLOCK_D": bd}, nw, ns)
    monkeypatch.setenv(kernels.CONFIG_ENV, "fastest")
    with pytest.raises(ValueError, match="expected one of pinned, autotune"):
        kernels._configs("fwd")


@triton_only
def test_tf32_switch_read_through_either_api() -> None:
    """float32 dots use TF32 exactly when F.linear's matmuls may. Once the newer
    `fp32_precision` API is set, reading `allow_tf32` raises: it is read first."""
    from grassmann_flows.ops.wedge_project import triton as kernels

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no fp32_precision API")
    assert kernels.kernel_meta(torch.float32, 8)["PREC"] == ("tf32" if matmul.allow_tf32 else "ieee")
    try:
        matmul.fp32_precision = "tf32"
        assert kernels.kernel_meta(torch.float32, 8)["PREC"] == "tf32"
        matmul.fp32_precision = "ieee"
        assert kernels.kernel_meta(torch.float32, 8)["PREC"] == "ieee"
    finally:
        matmul.fp32_precision = "none"


@triton_only
def test_interpreter_detection_without_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Triton 3.4 there is no `triton.knobs`: the switch is read from the environment."""
    from grassmann_flows.ops.wedge_project import triton as kernels

    monkeypatch.setattr(kernels, "triton", types.SimpleNamespace())
    for value, expected in (("1", True), ("0", False)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert kernels._interpreting() is expected
    monkeypatch.setattr(kernels, "triton", types.SimpleNamespace(
        knobs=types.SimpleNamespace(runtime=types.SimpleNamespace(interpret=True))))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels._interpreting() is True  # knobs, where they exist, decide


def test_triton_available_needs_triton_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(op.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(op.importlib.metadata, "version", lambda name: "2.3.1")
    assert not op.triton_available()
    monkeypatch.setattr(op.importlib.metadata, "version", lambda name: "3.6.0")
    assert op.triton_available()


def test_cpu_without_interpreter_raises() -> None:
    """Without TRITON_INTERPRET, CPU tensors get a clear error; the package imports no Triton."""
    pytest.importorskip("triton", reason="the fused kernels are written in Triton, which is not installed")
    code = (
        "import sys, torch\n"
        "import grassmann_flows.ops.wedge_project as op\n"
        "import grassmann_flows.models\n"
        "assert 'triton' not in sys.modules, 'importing the package imported triton'\n"
        "u = torch.randn(4, 8)\n"
        "try:\n"
        "    op.wedge_project_fused(u, u, torch.randn(6, 28))\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error on CPU tensors')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
