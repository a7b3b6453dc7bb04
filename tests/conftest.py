"""Session-wide test setup and the comparison helpers every test module shares.

Without a GPU, Triton kernels run through Triton's interpreter. The switch is read
when kernels are first decorated, so it must be set before any test module imports
Triton (test order must not matter). The kernels run their pinned config
(GRASSMANN_FLOWS_KERNEL_CONFIG=pinned, the default; a value the caller set is kept), so
that GPU runs compile one config per shape instead of timing the space.

Tests marked `gpu` need CUDA; elsewhere they are skipped with the reason shown
(`pytest -m gpu` selects them).
"""

from __future__ import annotations

import os
from typing import Callable

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GRASSMANN_FLOWS_KERNEL_CONFIG", "pinned")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Largest |error| over largest |reference| that each compute dtype may reach against a
# float64 reference on the same (rounded) inputs.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def err_ratio(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 (0 for empty tensors)."""
    if expected.numel() == 0:
        return 0.0
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Same shape, finite, and err_ratio(actual, expected) <= tol."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(expected).all(), f"{name}: reference not finite"
    assert torch.isfinite(actual).all(), f"{name}: not finite"
    ratio = err_ratio(actual, expected)
    assert ratio <= tol, f"{name}: error ratio {ratio:.3e} > {tol:.0e}"


# ------------------------------------------------------------- the wedge projection op

WedgeProject = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def wedge_inputs(
    lead: tuple[int, ...], r: int, d: int, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, w: (*lead, r) and weight: (d, P) leaves requiring grad; dy: (*lead, d). All on `device`."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*lead, r, generator=g)
    w = torch.randn(*lead, r, generator=g)
    weight = torch.randn(d, r * (r - 1) // 2, generator=g) / r
    dy = torch.randn(*lead, d, generator=g)
    return tuple(t.to(device, dtype).requires_grad_(t is not dy) for t in (u, w, weight, dy))


def check_wedge_project(
    project: WedgeProject, lead: tuple[int, ...], r: int, d: int, dtype: torch.dtype,
    device: str | torch.device, tol: float | None = None,
) -> None:
    """`project`'s output and (u, w, weight) gradients against the Plücker reference in float64.

    The reference runs on the same (rounded) inputs in float64, so the error measured
    is the implementation's own: rounding of operands, accumulation and output.
    """
    from grassmann_flows.ops.wedge_project import wedge_project_reference

    tol = TOL[dtype] if tol is None else tol
    u, w, weight, dy = wedge_inputs(lead, r, d, dtype, device)
    y = project(u, w, weight)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, (u, w, weight), dy)
    leaves = [t.detach().double().requires_grad_() for t in (u, w, weight)]
    y_ref = wedge_project_reference(*leaves)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.double())
    assert_close("y", y, y_ref, tol)
    for name, g, g_ref in zip(("du", "dw", "dweight"), grads, grads_ref):
        assert g.dtype == dtype
        assert_close(name, g, g_ref, tol)


# ------------------------------------------------------- the mixer's feature path

MIXER_OFFSETS = (1, 2, 4, 8, 12, 16)


def check_features_against_naive(
    project: WedgeProject, cfg, dtype: torch.dtype, device: str | torch.device, tol: float
) -> None:
    """fast_features with `project` against the literal per-offset reference (float64).

    L = 21 with offsets up to 16 covers positions with no valid offset (t < min Delta)
    and with only some offsets valid (t < Delta); the padding mask removes partners too.
    Compares g and the gradients of z, W_plü and b_plü.
    """
    from grassmann_flows.models.mixer.fast import fast_features
    from grassmann_flows.models.mixer.naive import naive_features

    B, L, d, r = 2, 21, 24, cfg.reduced_dim
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, L, r, generator=g)
    weight = torch.randn(d, cfg.n_pluecker, generator=g) / r
    bias = torch.randn(d, generator=g)
    dg = torch.randn(B, L, d, generator=g)
    pad_mask = torch.ones(B, L)
    pad_mask[1, -3:] = 0
    leaves = [t.to(device, dtype).requires_grad_() for t in (z, weight, bias)]
    out = fast_features(*leaves, MIXER_OFFSETS, cfg, pad_mask.to(device), project)
    grads = torch.autograd.grad(out, leaves, dg.to(device, dtype))
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = naive_features(ref_leaves[0], [ref_leaves[1]], [ref_leaves[2]], MIXER_OFFSETS, cfg,
                         pad_mask.to(device, torch.float64))
    ref_grads = torch.autograd.grad(ref, ref_leaves, dg.to(device, torch.float64))
    assert_close("g", out, ref, tol)
    for name, gr, gr_ref in zip(("dz", "dweight", "dbias"), grads, ref_grads):
        assert_close(name, gr, gr_ref, tol)


def compare_models(
    model: torch.nn.Module, ref: torch.nn.Module, ids: torch.Tensor, tol: float, grad_tol: float | None = None
) -> None:
    """Logits and every parameter gradient of a next-token loss: `model` against `ref`.

    Either may be a torch.compile'd module (its parameter names carry `_orig_mod.`).
    """
    outputs = {}
    for name, m in (("model", model), ("ref", ref)):
        m.zero_grad(set_to_none=True)
        logits = m(ids)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.roll(-1, 1).flatten()).backward()
        outputs[name] = logits.detach()
    assert_close("logits", outputs["model"], outputs["ref"], tol)
    ref_params = {n.removeprefix("_orig_mod."): p for n, p in ref.named_parameters()}
    params = {n.removeprefix("_orig_mod."): p for n, p in model.named_parameters()}
    assert params.keys() == ref_params.keys()
    for name, p in params.items():
        assert p.grad is not None and ref_params[name].grad is not None, name
        assert_close(f"grad {name}", p.grad, ref_params[name].grad, tol if grad_tol is None else grad_tol)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny tensors: extra threads only spin on a busy
    shared CPU. Restored for the other modules. Use with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
