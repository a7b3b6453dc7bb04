"""speedrun.sh end to end (QUICK, fixture data) and its handling of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "data"


def speedrun(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "PYTHON": sys.executable, "OUT_ROOT": str(tmp_path / "outputs"),
            "CACHE_DIR": str(tmp_path / "cache"), "DATA_DIR": str(FIXTURE), "QUICK": "1",
            "LAYER_DEPTHS_OVERRIDE": "1", "SEQ_LENS": "16", "SNLI_LAYERS": "1",
            "EXTRA_ARGS": "--opt d_model=32 --opt d_ff=64 --opt n_heads=2"}
    return subprocess.run(["bash", str(REPO / "speedrun.sh"), *args], cwd=REPO, env={**base, **env},
                          capture_output=True, text=True, timeout=900)


def test_quick_train_then_eval_both_models_both_datasets(tmp_path: Path) -> None:
    res = speedrun(tmp_path, "all", "all", "train")
    assert res.returncode == 0, res.stderr[-2000:]
    (stamp,) = (tmp_path / "outputs").iterdir()
    names = {f"{m}_wikitext_L16_N1_s0" for m in ("transformer", "grassmann")} | \
            {f"{m}_snli_L128_N1_s0" for m in ("transformer", "grassmann")}
    assert {p.name for p in stamp.iterdir()} == names
    for name in names:
        run = stamp / name
        assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
        results = json.loads((run / "results.json").read_text())
        assert results["status"] == "completed" and results["corpus"] == "custom"
        assert results["test"] is not None
    res = speedrun(tmp_path, "all", "all", "eval")
    assert res.returncode == 0, res.stderr[-2000:]
    for name in names:
        assert f"evaluating the newest checkpoint of {name}" in res.stdout
        out = json.loads((stamp / name / "eval_test.json").read_text())
        assert out["split"] == "test"
        assert ("blocks" in out) if "wikitext" in name else (0.0 <= out["acc"] <= 1.0)


@pytest.mark.parametrize("args", [("gpt", "wikitext"), ("all", "imdb"), ("all", "snli", "fit"), ()])
def test_bad_arguments_print_usage_and_fail(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = speedrun(tmp_path, *args)
    assert res.returncode == 2
    assert "error:" in res.stderr and "./speedrun.sh {grassmann|transformer|all}" in res.stderr
    assert not (tmp_path / "outputs").exists()  # stopped before any work


def test_missing_data_stops_with_one_clear_line(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "nowhere")}
    res = subprocess.run([sys.executable, "-m", "grassmann_flows.train", "--model", "grassmann",
                          "--data-dir", env["DATA_DIR"]], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=300)
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:")
    assert "--data-dir" in err[0] and "datasets" in err[0]
    assert not (tmp_path / "outputs").exists()


def test_eval_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    res = speedrun(tmp_path, "grassmann", "wikitext", "eval")
    assert res.returncode == 1
    assert "no " in res.stderr and "best.pt to evaluate" in res.stderr
