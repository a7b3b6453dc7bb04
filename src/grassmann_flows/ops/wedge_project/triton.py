"""Fused wedge projection y = W (u ∧ w) in Triton, forward and backward.

    y_k = sum_{i<j} W[k, (ij)] (u_i w_j - u_j w_i) = u^T A_k w,
    A_k[i, j] = W[k, (ij)], A_k[j, i] = -W[k, (ij)], A_k[i, i] = 0,

with the Plücker pairs (i, j) in row-major upper-triangular order
(`torch.triu_indices(r, r, 1)`), the order of `naive.pluecker`. Beside it in this
folder: `naive.wedge_project_reference` (explicit Plücker coordinates) and
`torch.wedge_project`, the same GEMM as here with the outer product u w^T written to
memory.

No kernel here writes the (N, r*r) outer product or the (N, P) Plücker tensor: each
program forms a (BLOCK_N, BLOCK_I * r) slice of u w^T in registers (rows i0..i0+BLOCK_I
of the outer product, flattened) and feeds it straight to `tl.dot` against the
matching rows of A^T: (r*r, d). See docs/kernels.md for the tiling and roofline.

    forward   y  = (u w^T) A^T                    _fwd_kernel,  grid (N-blocks, d-blocks)
    backward  dX = dy A,  du_i = dX_i. w,
              dw = sum_i u_i dX_i                 _bwd_uw_kernel, grid (N-blocks,)
              dA^T = (u w^T)^T dy                 _bwd_a_kernel, grid (i-blocks, d-blocks, splits)
                                                  over token splits, then summed in PyTorch

A^T is built from W in PyTorch (`kernel_weight`: a signed gather of d*r*r entries), so
autograd maps dA back to dW (dW[k,(ij)] = dA[k,i,j] - dA[k,j,i]) through that gather.

Dtypes: float16 / bfloat16 run the tensor cores with float32 accumulation; float32 runs
exact-IEEE dots unless float32 matmuls may use TF32 (`matmul_tf32`, as F.linear decides);
float64 computes and accumulates in float64 (Triton's fp64 dot: for checks, not speed).
Under autocast, inputs other than float64 are cast to the autocast dtype (as for F.linear).

Block sizes are the first entry of `SPACE`, a fixed, reviewed config (the same in every
process, so a run's results do not depend on timing); GRASSMANN_FLOWS_KERNEL_CONFIG=autotune
times the whole space, which the benchmark does. `compile_check.py` compiles every entry
for sm_90 and checks shared memory and spills.

The ops are `torch.library.triton_op`s (grassmann_flows::wedge_project and its
backward), so torch.compile traces into the kernels instead of graph-breaking.
On CPU tensors they run only through Triton's interpreter (TRITON_INTERPRET=1 set
before this module is imported), which is what the tests do.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

__all__ = ["CONFIG_ENV", "SPACE", "kernel_meta", "kernel_weight", "matmul_tf32", "num_splits", "wedge_project_fused"]


def _interpreting() -> bool:
    """Whether kernels decorated now run in Triton's interpreter.

    `triton.knobs` exists from Triton 3.4 on; older releases read TRITON_INTERPRET
    from the environment when a kernel is decorated, which is what the fallback reads.
    """
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton picks the interpreter when a kernel is decorated, i.e. at import of this module.
INTERPRET: bool = _interpreting()

# The dA kernel reduces over tokens; it splits them into at most MAX_SPLITS chunks so
# the grid fills the GPU, each chunk at least MIN_SPLIT_TOKENS long. The split
# partials (splits, r*r, d) float32 are summed in PyTorch (deterministic, no atomics).
# Read at every call: tests lower MIN_SPLIT_TOKENS so small inputs take the split path.
MAX_SPLITS = 16
MIN_SPLIT_TOKENS = 2048

# Configs per kernel: (BLOCK_N, BLOCK_D, num_warps, num_stages), the pinned config first. Every entry compiles for sm_90 (Hopper) with Triton 3.6 in float32,
# bfloat16, float16 and float64 at r = 32, d = 256 within 232,448 bytes of shared
# memory per block and without register spills; the pinned ones also with Triton 3.9
# (`compile_check.py`, run by tests/test_triton_compile.py). Larger tiles spill in
# float32/float64, whose dots run on FMA units with operands in registers.
SPACE: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "fwd": ((64, 64, 8, 2), (64, 64, 8, 3), (64, 128, 8, 2), (128, 32, 8, 2), (32, 64, 4, 3)),
    "bwd_uw": ((16, 32, 8, 2), (32, 32, 4, 2), (64, 32, 8, 2)),
    "bwd_a": ((32, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 2)),
}
# "pinned" (default: training, evaluation, tests) takes the first entry of SPACE for every
# shape and compiles nothing else. "autotune" (the benchmark) times every entry on first use
# of a shape: the winner can differ between processes, and with it the results, because
# the weight gradient sums over tokens in chunks of BLOCK_N.
CONFIG_ENV = "GRASSMANN_FLOWS_KERNEL_CONFIG"
_CONFIG_MODES = ("pinned", "autotune")


def _config_mode() -> str:
    mode = os.environ.get(CONFIG_ENV, "pinned")
    if mode not in _CONFIG_MODES:
        raise ValueError(f"{CONFIG_ENV}={mode!r}: expected one of {', '.join(_CONFIG_MODES)}")
    return mode


def _configs(kernel: str) -> list[triton.Config]:
    """Configs of `kernel` (one unless autotuning); one small config under the interpreter.

    The interpreter's BLOCK_D = 32 and BLOCK_N = 32 make small test shapes span several
    blocks with ragged edges, so masking and the d-loop are exercised.
    """
    if INTERPRET:
        return [triton.Config({"BLOCK_N": 32, "BLOCK_D": 32})]
    space = SPACE[kernel][:1] if _config_mode() == "pinned" else SPACE[kernel]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_D": bd}, num_warps=nw, num_stages=ns)
        for bn, bd, nw, ns in space
    ]


@triton.jit
def _load_rows(ptr, offs_n, mask_n, cols, width: tl.constexpr, dtype: tl.constexpr):
    """(len(offs_n), len(cols)) tile of a row-major (N, width) tensor as `dtype`; 0 outside."""
    tile = tl.load(
        ptr + offs_n[:, None] * width + cols[None, :],
        mask=mask_n[:, None] & (cols < width)[None, :], other=0.0,
    )
    return tile.to(dtype)


@triton.jit
def _token_rows(pid_n, N, BLOCK_N: tl.constexpr):
    """Token indices of block pid_n (int64: N * d may pass 2**31) and their mask."""
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    return offs_n, offs_n < N


@triton.jit
def _slice_pairs(BLOCK_I: tl.constexpr, BLOCK_R: tl.constexpr):
    """Row c of an outer-product slice is the pair (i0 + c // BLOCK_R, c % BLOCK_R): (c_i, c_j)."""
    offs_c = tl.arange(0, BLOCK_I * BLOCK_R)
    return offs_c // BLOCK_R, offs_c % BLOCK_R


@triton.jit
def _outer_slice(u_blk, w, in_dtype: tl.constexpr, DOT: tl.constexpr, BLOCK_N: tl.constexpr, K: tl.constexpr):
    """(BLOCK_N, K) slice of u w^T from u_blk: (BLOCK_N, BLOCK_I) and w: (BLOCK_N, BLOCK_R).

    Formed in the accumulator dtype, rounded once to the input dtype (as the unfused
    GEMM's operand would be), then given the dot's operand dtype.
    """
    x = tl.reshape(u_blk[:, :, None] * w[:, None, :], (BLOCK_N, K))
    return x.to(in_dtype).to(DOT)


@triton.autotune(configs=_configs("fwd"), key=["r", "d"])
@triton.jit
def _fwd_kernel(
    u_ptr, w_ptr, at_ptr, y_ptr,  # u, w: (N, r); at: (r*r, d) = A^T; y: (N, d)
    N, r: tl.constexpr, d: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """y[n, k] = sum_{i, j} u[n, i] w[n, j] A^T[i*r + j, k] for one (BLOCK_N, BLOCK_D) tile."""
    pid_d = tl.program_id(1)
    offs_n, mask_n = _token_rows(tl.program_id(0), N, BLOCK_N)
    offs_k = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tl.arange(0, BLOCK_R)
    offs_i = tl.arange(0, BLOCK_I)
    c_i, c_j = _slice_pairs(BLOCK_I, BLOCK_R)
    mask_k = offs_k < d

    # w stays in registers for the whole i-loop; r is padded to BLOCK_R with zeros.
    w = _load_rows(w_ptr, offs_n, mask_n, offs_j, r, ACC)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
    for i0 in range(0, r, BLOCK_I):
        rows_i = i0 + offs_i
        u_blk = _load_rows(u_ptr, offs_n, mask_n, rows_i, r, ACC)
        x = _outer_slice(u_blk, w, u_ptr.dtype.element_ty, DOT, BLOCK_N, BLOCK_I * BLOCK_R)
        a_i = i0 + c_i
        a = tl.load(
            at_ptr + (a_i * r + c_j)[:, None] * d + offs_k[None, :],
            mask=((a_i < r) & (c_j < r))[:, None] & mask_k[None, :], other=0.0,
        ).to(DOT)
        acc = tl.dot(x, a, acc=acc, input_precision=PREC, out_dtype=ACC)
    tl.store(
        y_ptr + offs_n[:, None] * d + offs_k[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_n[:, None] & mask_k[None, :],
    )


@triton.autotune(configs=_configs("bwd_uw"), key=["r", "d"])
@triton.jit
def _bwd_uw_kernel(
    dy_ptr, u_ptr, w_ptr, at_ptr, du_ptr, dw_ptr,  # dy: (N, d); u, w, du, dw: (N, r)
    N, r: tl.constexpr, d: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """du, dw for one block of tokens, through dX = dy A without storing dX.

    dX[n, i, j] = sum_k dy[n, k] A_k[i, j];  du[n, i] = sum_j dX[n, i, j] w[n, j];
    dw[n, j] = sum_i u[n, i] dX[n, i, j]. Each i-slice of dX lives only in registers.
    """
    offs_n, mask_n = _token_rows(tl.program_id(0), N, BLOCK_N)
    offs_j = tl.arange(0, BLOCK_R)
    offs_i = tl.arange(0, BLOCK_I)
    c_i, c_j = _slice_pairs(BLOCK_I, BLOCK_R)
    mask_j = offs_j < r

    w = _load_rows(w_ptr, offs_n, mask_n, offs_j, r, ACC)
    dw = tl.zeros((BLOCK_N, BLOCK_R), dtype=ACC)
    for i0 in range(0, r, BLOCK_I):
        rows_i = i0 + offs_i
        mask_i = mask_n[:, None] & (rows_i < r)[None, :]
        u_blk = _load_rows(u_ptr, offs_n, mask_n, rows_i, r, ACC)
        a_i = i0 + c_i
        mask_a = (a_i < r) & (c_j < r)
        dx = tl.zeros((BLOCK_N, BLOCK_I * BLOCK_R), dtype=ACC)
        # dX needs all of d before it can be contracted with u and w.
        for k0 in range(0, d, BLOCK_D):
            offs_k = k0 + tl.arange(0, BLOCK_D)
            mask_k = offs_k < d
            dy = _load_rows(dy_ptr, offs_n, mask_n, offs_k, d, DOT)
            # A slice loaded transposed, (BLOCK_D, BLOCK_I * BLOCK_R), for dy @ A.
            a_t = tl.load(
                at_ptr + (a_i * r + c_j)[None, :] * d + offs_k[:, None],
                mask=mask_a[None, :] & mask_k[:, None], other=0.0,
            ).to(DOT)
            dx = tl.dot(dy, a_t, acc=dx, input_precision=PREC, out_dtype=ACC)
        dx3 = tl.reshape(dx, (BLOCK_N, BLOCK_I, BLOCK_R))
        du_blk = tl.sum(dx3 * w[:, None, :], axis=2)
        tl.store(du_ptr + offs_n[:, None] * r + rows_i[None, :], du_blk.to(du_ptr.dtype.element_ty), mask=mask_i)
        dw += tl.sum(u_blk[:, :, None] * dx3, axis=1)
    tl.store(
        dw_ptr + offs_n[:, None] * r + offs_j[None, :],
        dw.to(dw_ptr.dtype.element_ty),
        mask=mask_n[:, None] & mask_j[None, :],
    )


@triton.autotune(configs=_configs("bwd_a"), key=["r", "d"])
@triton.jit
def _bwd_a_kernel(
    dy_ptr, u_ptr, w_ptr, part_ptr,  # dy: (N, d); u, w: (N, r); part: (splits, r*r, d)
    N, r: tl.constexpr, d: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One split's share of dA^T[i*r + j, k] = sum_n u[n, i] w[n, j] dy[n, k].

    Program (pid_i, pid_d, pid_s) owns rows i in [pid_i * BLOCK_I, +BLOCK_I) of dA^T,
    columns in its d-block, and the pid_s-th contiguous chunk of token blocks; it
    rebuilds the outer-product slice per token block, as the forward does.
    """
    pid_i = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_splits = tl.num_programs(2)
    offs_k = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tl.arange(0, BLOCK_R)
    rows_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    c_i, c_j = _slice_pairs(BLOCK_I, BLOCK_R)
    a_i = pid_i * BLOCK_I + c_i
    mask_k = offs_k < d

    blocks_per_split = tl.cdiv(tl.cdiv(N, BLOCK_N), n_splits)
    n_start = pid_s * blocks_per_split * BLOCK_N
    n_end = tl.minimum(n_start + blocks_per_split * BLOCK_N, N)
    acc = tl.zeros((BLOCK_I * BLOCK_R, BLOCK_D), dtype=ACC)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < n_end
        u_blk = _load_rows(u_ptr, offs_n, mask_n, rows_i, r, ACC)
        w = _load_rows(w_ptr, offs_n, mask_n, offs_j, r, ACC)
        x = _outer_slice(u_blk, w, u_ptr.dtype.element_ty, DOT, BLOCK_N, BLOCK_I * BLOCK_R)
        dy = _load_rows(dy_ptr, offs_n, mask_n, offs_k, d, DOT)
        acc = tl.dot(tl.trans(x), dy, acc=acc, input_precision=PREC, out_dtype=ACC)
    tl.store(
        part_ptr + pid_s * (r * r * d) + (a_i * r + c_j)[:, None] * d + offs_k[None, :],
        acc,
        mask=((a_i < r) & (c_j < r))[:, None] & mask_k[None, :],
    )


_TL_DTYPES = {
    torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64,
}


def kernel_meta(dtype: torch.dtype, r: int) -> dict[str, object]:
    """Compile-time arguments shared by the three kernels for inputs of `dtype`, width r.

    BLOCK_R pads r to a power of two (tl.arange) of at least 16 (tl.dot's minimum K);
    BLOCK_I rows of the outer product per dot make K = BLOCK_I * BLOCK_R = 128 for
    r <= 128, a good tensor-core depth (r = 32: four rows i per dot).
    ACC is the accumulator dtype, DOT the dtype of tl.dot's operands (the input dtype,
    except bfloat16 under the interpreter, whose tl.dot multiplies bfloat16's raw uint16
    bits (triton-lang/triton#11584): there the rounded bfloat16 operands are widened to
    float32, exact, so the products and float32 sums are those of the GPU's bf16 dot).
    """
    if dtype not in _TL_DTYPES:
        raise TypeError(f"wedge_project_fused supports float16/bfloat16/float32/float64, got {dtype}")
    block_r = max(16, triton.next_power_of_2(r))
    block_i = max(1, min(triton.next_power_of_2(r), 128 // block_r))
    dot = _TL_DTYPES[dtype]
    if dtype == torch.float64:
        acc, prec = tl.float64, "ieee"
    elif dtype == torch.float32:
        acc, prec = tl.float32, "tf32" if matmul_tf32() else "ieee"
    else:
        acc, prec = tl.float32, None  # half precision: tensor cores, precision knob unused
        if INTERPRET and dtype == torch.bfloat16:
            dot = tl.float32
    return {"BLOCK_R": block_r, "BLOCK_I": block_i, "ACC": acc, "DOT": dot, "PREC": prec}


def matmul_tf32() -> bool:
    """Whether float32 matmuls may use TF32, as cuBLAS is told for F.linear.

    torch >= 2.9 also has `fp32_precision` ("tf32" / "ieee", or "none" = unset); once it
    is set, reading the older `allow_tf32` raises, so it is read first.
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def num_splits(N: int) -> int:
    """Token chunks of the dA kernel for N tokens: at most MAX_SPLITS, each >= MIN_SPLIT_TOKENS.

    Fixed before the launch (the partial buffer needs it); the kernel divides its token
    blocks among however many splits the grid has.
    """
    return max(1, min(MAX_SPLITS, triton.cdiv(N, MIN_SPLIT_TOKENS)))


@triton_op("grassmann_flows::wedge_project", mutates_args=())
def _wedge_project(u: torch.Tensor, w: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """y: (N, d) from contiguous u, w: (N, r) and at = A^T: (r*r, d), all one dtype."""
    N, r = u.shape
    d = at.shape[1]
    y = torch.empty((N, d), device=u.device, dtype=u.dtype)
    if N > 0:
        def grid(meta: dict[str, int]) -> tuple[int, int]:
            return (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))

        wrap_triton(_fwd_kernel)[grid](u, w, at, y, N, r, d, **kernel_meta(u.dtype, r))
    return y


@triton_op("grassmann_flows::wedge_project_backward", mutates_args=())
def _wedge_project_backward(
    dy: torch.Tensor, u: torch.Tensor, w: torch.Tensor, at: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du, dw, dat): (N, r), (N, r), (r*r, d) from contiguous dy: (N, d) and the inputs."""
    N, r = u.shape
    d = at.shape[1]
    meta = kernel_meta(u.dtype, r)
    du = torch.empty_like(u)
    dw = torch.empty_like(u)
    splits = num_splits(N)
    part = torch.empty((splits, r * r, d), device=u.device, dtype=torch.promote_types(u.dtype, torch.float32))
    if N > 0:
        def grid_uw(m: dict[str, int]) -> tuple[int]:
            return (triton.cdiv(N, m["BLOCK_N"]),)

        def grid_a(m: dict[str, int]) -> tuple[int, int, int]:
            return (triton.cdiv(r, m["BLOCK_I"]), triton.cdiv(d, m["BLOCK_D"]), splits)

        wrap_triton(_bwd_uw_kernel)[grid_uw](dy, u, w, at, du, dw, N, r, d, **meta)
        wrap_triton(_bwd_a_kernel)[grid_a](dy, u, w, part, N, r, d, **meta)
    else:
        part.zero_()
    return du, dw, part.sum(0).to(at.dtype)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    u, w, at = ctx.saved_tensors
    return torch.ops.grassmann_flows.wedge_project_backward(dy.contiguous(), u, w, at)


_wedge_project.register_autograd(_backward, setup_context=_setup_context)


@lru_cache(maxsize=None)
def _signed_pairs(r: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, sign): (r*r,) each; A^T row i*r+j is sign * W^T[index] (pair of {i, j}).

    Built on `device` itself: under torch.compile the cache is bypassed and these ops are
    traced, and a CPU tensor in the graph would keep CUDA graphs (reduce-overhead) off.
    """
    i, j = torch.triu_indices(r, r, offset=1, device=device)
    p = torch.arange(i.numel(), device=device)
    index = torch.zeros(r, r, dtype=torch.long, device=device)
    sign = torch.zeros(r, r, device=device)
    index[i, j], index[j, i] = p, p
    sign[i, j], sign[j, i] = 1.0, -1.0
    return index.flatten(), sign.flatten()


def kernel_weight(weight: torch.Tensor, r: int) -> torch.Tensor:
    """A^T: (r*r, d) from W_plü: (d, P), row i*r + j holding A_k[i, j] for every k.

    A signed gather (each entry one entry of W or 0), so exact in any dtype; its autograd
    backward scatters dA^T into dW as dW[k,(ij)] = dA_k[i,j] - dA_k[j,i].
    """
    index, sign = _signed_pairs(r, weight.device)
    return weight.t()[index] * sign.to(weight.dtype)[:, None]


def wedge_project_fused(u: torch.Tensor, w: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """W (u ∧ w) with the Triton kernels; a drop-in for `torch.wedge_project` (this folder).

    u, w: (..., r); weight: (d, P), P = r(r-1)/2. Returns (..., d) in the compute
    dtype: the autocast dtype under autocast (inputs other than float64 are cast to it,
    as for F.linear), otherwise the common dtype of u, w and weight, which must agree.
    Differentiable in u, w and weight.
    """
    r = u.shape[-1]
    d, P = weight.shape
    if w.shape != u.shape:
        raise ValueError(f"u and w must have the same shape, got {tuple(u.shape)} and {tuple(w.shape)}")
    if P != r * (r - 1) // 2:
        raise ValueError(f"weight has {P} columns; r={r} needs r(r-1)/2 = {r * (r - 1) // 2}")
    if u.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            "wedge_project_fused runs Triton kernels and needs GPU tensors; on CPU it runs only "
            "through Triton's interpreter, with TRITON_INTERPRET=1 set before grassmann_flows.ops.wedge_project.triton "
            "is imported (slow: for tests). Use mixer_impl='fast' on CPU."
        )
    device_type = u.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        # As autocast does for F.linear: every floating operand but float64 runs in `dtype`.
        u, w, weight = (t if t.dtype == torch.float64 else t.to(dtype) for t in (u, w, weight))
    if not (u.dtype == w.dtype == weight.dtype):
        raise TypeError(f"dtype mismatch: u {u.dtype}, w {w.dtype}, weight {weight.dtype}")
    lead = u.shape[:-1]
    y = _wedge_project(
        u.reshape(-1, r).contiguous(), w.reshape(-1, r).contiguous(), kernel_weight(weight, r).contiguous()
    )
    return y.reshape(*lead, d)
