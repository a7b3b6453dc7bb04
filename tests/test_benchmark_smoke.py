"""scripts/benchmark.py runs end to end on CPU (--quick) and writes the JSON it promises.

No timing is asserted: CPU numbers at these sizes mean nothing. With Triton installed the
run sets TRITON_INTERPRET=1 so the fused rows go through the interpreter too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"
ENV_KEYS = {"device", "gpu", "torch", "triton", "cuda", "git_sha", "git_dirty", "date", "timestamp"}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_quick_cpu(tmp_path: Path) -> None:
    bench = _load_benchmark()
    has_triton = importlib.util.find_spec("triton") is not None
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if has_triton:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    assert files[0].with_suffix(".png").exists() and files[0].with_suffix(".svg").exists()
    assert "| L | B | attention ms" in proc.stdout and "Projected WikiText-2 grid" in proc.stdout

    result = json.loads(files[0].read_text())
    assert set(result) >= {"env", "config", "mixer", "model", "projection", "plots"}
    assert set(result["env"]) >= ENV_KEYS
    assert files[0].name == f"{bench.slug(result['env']['device'])}-{result['env']['date']}.json"
    assert result["config"]["quick"] is True

    lengths = {row["L"] for row in result["mixer"]}
    assert {row["layer"] for row in result["mixer"]} == set(bench.LAYERS)
    assert len(result["mixer"]) == len(lengths) * len(bench.LAYERS)
    for row in result["mixer"]:
        assert {"L", "B", "tokens", "layer"} <= set(row)
        assert "error" not in row, row
        if row["layer"] != "grassmann-fused" or has_triton:
            assert {"ms", "peak_mb", "first_step_s"} <= set(row), row
        else:
            assert "skipped" in row

    assert {row["model"] for row in result["model"]} == set(bench.MODELS)
    for row in result["model"]:
        assert {"L", "N", "B", "model", "mode"} <= set(row)
        assert "error" not in row, row
        if "skipped" not in row:
            assert {"ms", "tokens_per_s", "peak_mb", "params"} <= set(row), row

    proj = result["projection"]
    assert set(proj) >= {"runs", "total_hours", "grid_hours", "grassmann_variant"}
    assert {(r["L"], r["N"]) for r in proj["runs"]} == {(L, N) for L, N, _ in bench.GRID_RUNS}
    assert proj["grid_hours"] > 0


def test_fused_skip_reason_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load_benchmark()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = bench.fused_skip_reason(bench.torch.device("cpu"))
    assert reason is not None and ("TRITON_INTERPRET" in reason or "not installed" in reason)
