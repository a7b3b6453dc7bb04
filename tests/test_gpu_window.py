"""scripts/gpu_window.sh end to end on the CPU, on fixture data and tiny models: the plan with
estimates, the packed grid (two processes), the analysis and SUMMARY.md, within a budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "data"


def test_window_runs_its_steps_and_summarises(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "QUICK": "1", "DATA_DIR": str(FIXTURE), "BUDGET_S": "400",
           "OUT_ROOT": str(tmp_path / "outputs"), "CACHE_DIR": str(tmp_path / "cache"), "SEEDS": "0",
           "WINDOW_STAGES": "main", "SKIP_STEPS": "gpu_tests,benchmark,decode", "RUNS_PER_GPU": "2",
           "RECORDS_DIR": str(tmp_path / "records"), "RECORDS_README": str(tmp_path / "README.md"),
           "EXTRA_ARGS": "--opt d_model=32 --opt d_ff=64 --opt n_heads=2"}
    (tmp_path / "README.md").write_text("# records\n<!-- records:begin -->\n<!-- records:end -->\n")
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_window.sh")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (out,) = (tmp_path / "outputs").iterdir()
    steps = [line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines()]
    assert steps == [["env", "ok"], ["gpu_tests", "skipped (SKIP_STEPS)"], ["benchmark", "skipped (SKIP_STEPS)"],
                     ["grid", "ok"], ["decode", "skipped (SKIP_STEPS)"], ["analysis", "ok"], ["summary", "ok"],
                     ["record", "ok"]]
    assert "RUNS_PER_GPU=2 on the CPU" in res.stdout and "about" in res.stdout  # the plan, estimated
    names = {f"{m}_wikitext_L{L}_N{N}_paper_lr6e-4_s0" for m in ("transformer", "grassmann")
             for L, N in ((128, 6), (256, 12))}
    queue = json.loads((out / "queue.json").read_text())
    assert {r["name"]: r["status"] for r in queue["runs"]} == dict.fromkeys(names, "completed")
    for name in names:
        results = json.loads((out / name / "results.json").read_text())
        assert results["status"] == "completed" and results["corpus"] == "custom"
        assert (out / name / "eval_test.json").is_file() and (out / name / "train.log").is_file()
    summary = (out / "SUMMARY.md").read_text()
    assert all(name in summary for name in names) and "Cut or not started (0)" in summary
    assert "- corpus: custom" in summary
    assert (out / "env.json").is_file() and (out / "analysis.md").is_file()
    assert not list(out.glob("*.pt"))
    # the record keeps the command and every run, and the README table links it
    (record,) = (tmp_path / "records").iterdir()
    meta = json.loads((record / "record.json").read_text())
    assert "BUDGET_S=400" in meta["command"] and meta["command"].endswith("scripts/gpu_window.sh")
    assert {p.name for p in (record / "runs").iterdir()} == names
    assert f"[{record.name}](" in (tmp_path / "README.md").read_text()
