"""Compile the wedge-projection kernels for a GPU that need not be present; check resources.

    python -m grassmann_flows.ops.wedge_project.compile_check [--arch 90] [--r 32 --d 256]

For every kernel, every dtype the model runs (float32, bfloat16, float16, float64) and
every config of the autotuning space (`triton.SPACE`, or its first entry when
GRASSMANN_FLOWS_KERNEL_CONFIG=pinned), it runs
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` with the same
compile-time arguments as a launch (`kernel_meta`). No GPU and no CUDA driver are needed:
Triton lowers to PTX and runs the ptxas its wheel ships. Shared memory comes from the
compiled metadata, registers and spills from ptxas's own report (-v).

One line per compile; exit status 1 if any compile fails, spills registers or needs
more shared memory than `--smem` bytes per block (default: Hopper's 232,448 = 227 KB).
Run it without TRITON_INTERPRET (the interpreter has no compiler).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

HOPPER_SMEM = 232_448  # bytes of shared memory one block may use on sm_90
DTYPES = ("float32", "bfloat16", "float16", "float64")
# Pointer arguments of each kernel: "in" ones take the input dtype; "part" is the dA
# kernel's partial buffer, float32 (float64 for float64 inputs).
POINTERS = {
    "fwd": ("u_ptr", "w_ptr", "at_ptr", "y_ptr"),
    "bwd_uw": ("dy_ptr", "u_ptr", "w_ptr", "at_ptr", "du_ptr", "dw_ptr"),
    "bwd_a": ("dy_ptr", "u_ptr", "w_ptr", "part_ptr"),
}
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass
class Result:
    kernel: str
    dtype: str
    config: tuple[int, int, int, int]  # BLOCK_N, BLOCK_D, num_warps, num_stages
    seconds: float
    shared: int = -1
    registers: int = -1
    spills: int = -1
    error: str = ""

    def ok(self, smem: int) -> bool:
        return not self.error and self.spills == 0 and 0 <= self.shared <= smem

    def line(self, smem: int) -> str:
        bn, bd, nw, ns = self.config
        cfg = f"BLOCK_N={bn:<3} BLOCK_D={bd:<3} warps={nw} stages={ns}"
        if self.error:
            return f"FAIL {self.kernel:<6} {self.dtype:<8} {cfg}  {self.error}  ({self.seconds:.1f} s)"
        status = "ok  " if self.ok(smem) else "FAIL"
        return (f"{status} {self.kernel:<6} {self.dtype:<8} {cfg}  smem {self.shared:>6} B  "
                f"regs {self.registers:>3}  spills {self.spills}  ({self.seconds:.1f} s)")


def compile_one(kernel: str, dtype: str, config: tuple[int, int, int, int], arch: int, r: int, d: int) -> Result:
    """Compile one kernel for `arch` and read its shared memory, registers and spills."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton as kernels

    tl_names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
    tdtype = getattr(torch, dtype)
    part = "fp64" if dtype == "float64" else "fp32"
    fn = {"fwd": kernels._fwd_kernel, "bwd_uw": kernels._bwd_uw_kernel, "bwd_a": kernels._bwd_a_kernel}[kernel].fn
    bn, bd, nw, ns = config
    constexprs = {"r": r, "d": d, "BLOCK_N": bn, "BLOCK_D": bd, **kernels.kernel_meta(tdtype, r)}
    signature = {name: f"*{part if name == 'part_ptr' else tl_names[dtype]}" for name in POINTERS[kernel]}
    signature["N"] = "i32"
    signature.update({name: "constexpr" for name in constexprs})
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas's report
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": nw, "num_stages": ns},
            )
    except Exception as e:  # a compile error is a result to report, not a crash
        message = " ".join(str(e).split())[:300]
        return Result(kernel, dtype, config, time.perf_counter() - start, error=f"{type(e).__name__}: {message}")
    seconds = time.perf_counter() - start
    spills = [int(a) + int(b) for a, b in _SPILLS.findall(log.getvalue())]
    regs = [int(a) for a in _REGS.findall(log.getvalue())]
    if not spills or not regs:
        return Result(kernel, dtype, config, seconds, error="no ptxas report (was the kernel cached?)")
    return Result(kernel, dtype, config, seconds, shared=int(compiled.metadata.shared),
                  registers=max(regs), spills=sum(spills))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90 (default)")
    parser.add_argument("--r", type=int, default=32, help="reduced dimension r (default: the paper's 32)")
    parser.add_argument("--d", type=int, default=256, help="model width d (default: the paper's 256)")
    parser.add_argument("--smem", type=int, default=HOPPER_SMEM, help="shared memory limit per block, bytes")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of " + ",".join(DTYPES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = parser.parse_args(argv)
    dtypes = args.dtypes.split(",")
    if bad := [t for t in dtypes if t not in DTYPES]:
        parser.error(f"unknown dtype {bad[0]!r}; choose from {', '.join(DTYPES)}")
    # Every compile must run ptxas, so that its report can be read: a private, empty cache.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="wedge-compile-check-")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    import triton

    from . import triton as kernels

    if kernels.INTERPRET:
        print("error: TRITON_INTERPRET is set; the interpreter compiles nothing. Unset it.", file=sys.stderr)
        return 2
    jobs = [(k, t, cfg) for k in POINTERS for cfg in [
        (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_D"], c.num_warps, c.num_stages) for c in kernels._configs(k)
    ] for t in dtypes]
    print(f"triton {triton.__version__}, sm_{args.arch}, r={args.r}, d={args.d}: {len(jobs)} compiles, "
          f"{args.jobs} at a time, shared memory limit {args.smem} B", flush=True)
    start = time.perf_counter()
    failed = 0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(compile_one, k, t, cfg, args.arch, args.r, args.d) for k, t, cfg in jobs]
        for future in futures:
            result = future.result()
            failed += not result.ok(args.smem)
            print(result.line(args.smem), flush=True)
    print(f"{len(jobs) - failed}/{len(jobs)} ok in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
