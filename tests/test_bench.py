"""scripts/benchmark.py (the package grassmann_flows.bench) runs end to end on CPU (--quick)
and writes the JSON it promises.

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
import torch

from grassmann_flows.bench import cli, decode, mixer, model
from grassmann_flows.bench.timing import fused_skip_reason, slug

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmark.py"
ENV_KEYS = {"device", "gpu", "torch", "triton", "cuda", "git_sha", "git_dirty", "date", "timestamp"}


def test_benchmark_quick_cpu(tmp_path: Path) -> None:
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
    assert files[0].name == f"{slug(result['env']['device'])}-{result['env']['date']}.json"
    assert result["config"]["quick"] is True

    lengths = {row["L"] for row in result["mixer"]}
    assert {row["layer"] for row in result["mixer"]} == set(mixer.LAYERS)
    assert len(result["mixer"]) == len(lengths) * len(mixer.LAYERS)
    for row in result["mixer"]:
        assert {"L", "B", "tokens", "layer"} <= set(row)
        assert "error" not in row, row
        if row["layer"] != "grassmann-fused" or has_triton:
            assert {"ms", "peak_mb", "first_step_s"} <= set(row), row
        else:
            assert "skipped" in row

    assert {row["model"] for row in result["model"]} == set(model.MODELS)
    for row in result["model"]:
        assert {"L", "N", "B", "model", "mode"} <= set(row)
        assert "error" not in row, row
        if "skipped" not in row:
            assert {"ms", "tokens_per_s", "peak_mb", "params"} <= set(row), row

    proj = result["projection"]
    assert set(proj) >= {"runs", "total_hours", "grid_hours", "grassmann_variant"}
    assert {(r["L"], r["N"]) for r in proj["runs"]} == {(L, N) for L, N, _ in model.GRID_RUNS}
    assert proj["grid_hours"] > 0


def test_fused_skip_reason_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = fused_skip_reason(torch.device("cpu"))
    assert reason is not None and ("TRITON_INTERPRET" in reason or "not installed" in reason)


def test_window_plan_cuts_the_run_and_explicit_flags_win() -> None:
    args = cli.parse_args(["--window"])
    assert (args.impls, args.lengths, args.warmup, args.steps, args.max_step_s) == (["fast", "fused"], [4096, 16384],
                                                                                   3, 10, 5.0)
    assert args.parts == {"mixer", "model"}
    args = cli.parse_args(["--window", "--impls", "naive", "--lengths", "256", "--steps", "4", "--max-step-s", "9"])
    assert (args.impls, args.lengths, args.warmup, args.steps, args.max_step_s) == (["naive"], [256], 3, 4, 9.0)
    assert cli.parse_args(["--window", "--only", "decode"]).parts == {"decode"}


def test_decode_table_has_a_column_set_per_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder added to DECODERS gets its rows, its columns and its ratios to the Transformer."""
    extra = decode.Decoder("library", decode.DECODERS[0].build, decode.DECODERS[0].state_mb,
                           decode.DECODERS[0].point)
    monkeypatch.setattr(decode, "DECODERS", [*decode.DECODERS, extra])
    rows = [{"model": name, "n_positions": 32, "N": 2, "B": 1, "C": 8, "ms": ms, "state_mb": mb, "peak_mb": None}
            for name, ms, mb in (("transformer", 2.0, 4.0), ("grassmann", 1.0, 1.0), ("library", 4.0, 8.0))]
    head, _, line = decode.decode_table(rows).splitlines()[:3]
    cells = dict(zip(head.strip("| ").split(" | "), line.strip("| ").split(" | ")))
    assert cells["library ms/token"] == "4.00" and cells["Library / Transformer ms"] == "2.00×"
    assert cells["Grassmann / Transformer ms"] == "0.50×" and cells["Transformer / Grassmann state"] == "4.00×"
    assert cells["Transformer / Library state"] == "0.50×" and cells["grassmann peak MB"] == "—"

