"""The Triton kernels compile for sm_90 (Hopper) without spills and within its shared memory.

No GPU needed: `grassmann_flows.ops.wedge_project.compile_check` runs
`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` for every kernel,
dtype (fp32, bf16, fp16, fp64) and autotuning config, with the ptxas that Triton's
wheel ships. The interpreter tests cannot see these failures (a float64 dot that does
not compile, a tile that needs more shared memory than a Hopper block has).

Two Triton versions:
- 3.6.0, which torch 2.11 (the GPU machines' torch) pins: the whole autotuning space.
  It lives in a separate git-ignored directory, `.triton-pins/3.6.0`, which `.ci/run`
  installs once (`pip install --no-deps --target .triton-pins/3.6.0 triton==3.6.0`).
- the Triton installed with the project: the pinned config only (cheaper; it is what
  GRASSMANN_FLOWS_KERNEL_CONFIG=pinned runs).
Each runs in a subprocess, without TRITON_INTERPRET (which conftest sets on CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PINNED_TRITON = "3.6.0"  # keep in step with .ci/run
PIN_DIR = REPO / ".triton-pins" / PINNED_TRITON


def run_compile_check(pythonpath: list[Path], config: str, compiles: int) -> str:
    """Run compile_check in a subprocess; assert all `compiles` pass and return its report."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*pythonpath, REPO / "src"])
    env["GRASSMANN_FLOWS_KERNEL_CONFIG"] = config
    proc = subprocess.run(
        [sys.executable, "-m", "grassmann_flows.ops.wedge_project.compile_check"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    report = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    assert f": {compiles} compiles," in lines[0], report
    assert lines[-1].startswith(f"{compiles}/{compiles} ok"), report
    return proc.stdout


def test_sm90_compile_with_the_gpu_machines_triton() -> None:
    """The whole autotuning space, Triton 3.6.0."""
    if not (PIN_DIR / "triton").is_dir():
        message = (f"Triton {PINNED_TRITON} is not installed in {PIN_DIR.relative_to(REPO)}: run "
                   f"`python -m pip install --no-deps --target {PIN_DIR.relative_to(REPO)} triton=={PINNED_TRITON}` "
                   "(.ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("triton", reason="the kernels are written in Triton, which is not installed")
    from grassmann_flows.ops.wedge_project.compile_check import DTYPES
    from grassmann_flows.ops.wedge_project.triton import SPACE

    report = run_compile_check([PIN_DIR], "autotune", len(DTYPES) * sum(map(len, SPACE.values())))
    assert f"triton {PINNED_TRITON}," in report.splitlines()[0], report


def test_sm90_compile_with_the_installed_triton() -> None:
    """The pinned config, with the Triton the project's environment has."""
    pytest.importorskip("triton", reason="the kernels are written in Triton, which is not installed")
    from grassmann_flows.ops.wedge_project.compile_check import DTYPES, POINTERS

    run_compile_check([], "pinned", len(DTYPES) * len(POINTERS))
