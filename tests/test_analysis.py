"""Tests of scripts/analyze_best_results.py, scripts/visualize_results.py and their shared
statistics, on the synthetic fixture sweep in tests/fixtures/results/ (not real results)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
FIXTURE = REPO / "tests" / "fixtures" / "results" / "synthetic_output"
sys.path.insert(0, str(SCRIPTS))

import _results  # noqa: E402

PAPER_HEADING = "### Paper comparison (full corpus)"
REDUCED_HEADING = "### Reduced-corpus results (not comparable with the paper)"


def _load_make_fixture():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE.parent / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def _analyze(sweep: Path) -> tuple[str, dict]:
    proc = _run_script("analyze_best_results.py", str(sweep))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads((sweep / "best_results_summary.json").read_text())


def _section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or higher level."""
    start = markdown.index(heading) + len(heading)
    nxt = re.search(r"^#{2,3} ", markdown[start:], flags=re.M)
    return markdown[start:start + nxt.start()] if nxt else markdown[start:]


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """A private copy of the fixture sweep (the analyser writes into the directory)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "sweep"))


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("df, expected", [(2, 4.302653), (10, 2.228139), (1000, 1.962339), (4, 2.776445)])
def test_t_quantile_matches_tables(df: float, expected: float) -> None:
    assert _results.student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert _results.student_t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)
    assert _results.student_t_cdf(expected, df) == pytest.approx(0.975, abs=1e-7)


def test_welch_interval_known_case() -> None:
    # Equal sizes and variances: Welch df = 2(n-1) = 4, se = sqrt(1/3 + 1/3).
    a, b = _results.make_stat([1.0, 2.0, 3.0]), _results.make_stat([2.0, 3.0, 4.0])
    interval = _results.welch_interval(a, b)
    half = 2.776445 * math.sqrt(2 / 3)
    assert interval.df == pytest.approx(4.0)
    assert interval.difference == pytest.approx(-1.0)
    assert (interval.low, interval.high) == pytest.approx((-1 - half, -1 + half), abs=1e-5)


def test_fixture_is_what_the_generator_writes(tmp_path: Path) -> None:
    regenerated = _load_make_fixture().make_fixture(tmp_path / "fresh")
    # No stale runs in the committed copy (a summary written there by hand is tolerated).
    assert sorted(p.relative_to(FIXTURE) for p in FIXTURE.rglob("results.json")) == \
        sorted(p.relative_to(regenerated) for p in regenerated.rglob("results.json"))
    for path in (p for p in regenerated.rglob("*") if p.is_file()):
        rel = path.relative_to(regenerated)
        assert (FIXTURE / rel).read_text() == path.read_text(), rel


# --------------------------------------------------------------------------- analyser


def _independent_groups(sweep: Path) -> dict[tuple, list[dict]]:
    """Completed runs of the fixture grouped by (task, model, tag), read straight from disk."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in sweep.rglob("results.json"):
        data = json.loads(path.read_text())
        if data["status"] == "completed":
            groups[(data["task"], data["model"], data["tag"])].append(data)
    return groups


def _ours(summary: dict, task: str, section: str) -> dict[tuple, dict]:
    return {(task, c["model"], c["tag"]): c
            for c in summary["tasks"][task]["sections"][section]["configs"] if c["source"] == "ours"}


def test_means_and_stds_match_an_independent_computation(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    ours = {**_ours(summary, "wikitext", "reduced_corpus"), **_ours(summary, "snli", "reduced_corpus")}
    groups = _independent_groups(sweep)
    assert set(ours) == set(groups)
    for key, runs in groups.items():
        metric = "ppl" if key[0] == "wikitext" else "acc"
        best = np.array([r[f"best_val_{metric}"] for r in runs])
        test = np.array([r["test"][metric] for r in runs])
        config = ours[key]
        assert config["n_seeds"] == len(runs)
        assert config["best_val"]["mean"] == pytest.approx(best.mean(), rel=1e-12)
        assert config["test"]["mean"] == pytest.approx(test.mean(), rel=1e-12)
        assert config["best_epoch"]["mean"] == pytest.approx(np.mean([r["best_epoch"] for r in runs]))
        if len(runs) > 1:
            assert config["best_val"]["std"] == pytest.approx(best.std(ddof=1), rel=1e-12)
            assert config["test"]["std"] == pytest.approx(test.std(ddof=1), rel=1e-12)
            if metric == "ppl":
                assert f"{best.mean():.2f} ± {best.std(ddof=1):.2f}" in markdown
        else:
            assert config["best_val"]["std"] is None


def test_gap_ratio_and_interval(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    gaps = {g["grassmann_tag"]: g for g in summary["tasks"]["wikitext"]["sections"]["reduced_corpus"]["gaps"]}
    groups = _independent_groups(sweep)
    log_g = np.log([r["best_val_ppl"] for r in groups[("wikitext", "grassmann", "")]])
    log_t = np.log([r["best_val_ppl"] for r in groups[("wikitext", "transformer", "")]])
    var_g, var_t = log_g.var(ddof=1) / len(log_g), log_t.var(ddof=1) / len(log_t)
    df = (var_g + var_t) ** 2 / (var_g ** 2 / (len(log_g) - 1) + var_t ** 2 / (len(log_t) - 1))
    half = _results.student_t_quantile(0.975, df) * math.sqrt(var_g + var_t)
    diff = log_g.mean() - log_t.mean()
    measure = gaps[""]["best_val"]
    assert measure["kind"] == "ratio"
    assert measure["estimate"] == pytest.approx(math.exp(diff), rel=1e-12)
    assert measure["df"] == pytest.approx(df, rel=1e-12)
    assert measure["ci95"] == pytest.approx([math.exp(diff - half), math.exp(diff + half)], rel=1e-9)
    # One seed on a side: a point estimate, no interval.
    nonorm = gaps["nonorm"]
    assert nonorm["transformer_tag"] == "" and nonorm["best_val"]["ci95"] is None
    assert nonorm["best_val"]["note"] == "n/a (1 seed)"
    snli_gap = summary["tasks"]["snli"]["sections"]["reduced_corpus"]["gaps"][0]["best_val"]
    assert snli_gap["kind"] == "difference" and snli_gap["note"] == "n/a (1 seed)"
    assert "n/a (1 seed)" in markdown


def test_custom_corpus_is_never_compared_with_the_paper(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    assert PAPER_HEADING not in markdown
    assert REDUCED_HEADING in markdown
    assert "### Published results (reference only)" in markdown
    for task in _results.TASKS:
        sections = summary["tasks"][task]["sections"]
        assert sections["paper_comparison"]["configs"] == []
        assert all(c["corpus"] == "custom" for c in sections["reduced_corpus"]["configs"])


def test_full_and_reduced_runs_are_kept_apart(sweep: Path) -> None:
    # Promote the untagged WikiText-2 runs to a full-corpus L=128/N=6 setting, demote the
    # ablation to "reduced", and check each lands under its own heading.
    for path in sweep.rglob("results.json"):
        data = json.loads(path.read_text())
        if data["task"] == "wikitext":
            if data["tag"]:
                data["corpus"] = "reduced"
            else:
                data.update(corpus="full", seq_len=128, n_layers=6)
            path.write_text(json.dumps(data))
    markdown, summary = _analyze(sweep)
    wikitext = markdown[markdown.index("## WikiText-2"):markdown.index("## SNLI")]
    paper_part = _section(wikitext, PAPER_HEADING)
    reduced_part = _section(wikitext, REDUCED_HEADING)
    assert "custom" not in paper_part and "reduced" not in paper_part and "nonorm" not in paper_part
    assert "Table 1 rows 1-2" in paper_part and "| ours |" in paper_part
    assert "nonorm" in reduced_part and "reduced" in reduced_part
    sections = summary["tasks"]["wikitext"]["sections"]
    assert {c["corpus"] for c in sections["paper_comparison"]["configs"]} == {"full"}
    assert {c["corpus"] for c in sections["reduced_corpus"]["configs"]} == {"reduced"}
    # Published rows at other settings are still listed, separately.
    reference = sections["published_reference"]["configs"]
    assert reference and all((c["seq_len"], c["n_layers"]) != (128, 6) for c in reference)


def test_diverged_runs_are_listed_and_excluded(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    excluded = summary["tasks"]["wikitext"]["excluded_runs"]
    assert [(e["run_name"], e["status"]) for e in excluded] == [("grassmann_wikitext_L32_N2_s3", "diverged")]
    config = _ours(summary, "wikitext", "reduced_corpus")[("wikitext", "grassmann", "")]
    assert "grassmann_wikitext_L32_N2_s3" not in config["run_names"]
    assert config["seeds"] == [0, 1, 2]
    assert "Excluded from all means and gaps" in markdown
    assert "grassmann_wikitext_L32_N2_s3 (diverged)" in markdown


def test_default_output_dir_is_the_newest_timestamp(tmp_path: Path) -> None:
    for name in ("2026-01-02_00-00-00", "2026-11-24_10-00-00", "2026-03-01_12-00-00", "tmp_scratch"):
        (tmp_path / name).mkdir()
    assert _results.resolve_output_dir(None, tmp_path).name == "2026-11-24_10-00-00"


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_or_empty_directory_fails_with_one_line(tmp_path: Path, make_dir: bool) -> None:
    target = tmp_path / "nothing_here"
    if make_dir:
        target.mkdir()
    for script in ("analyze_best_results.py", "visualize_results.py"):
        proc = _run_script(script, str(target))
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


# --------------------------------------------------------------------------- visualiser


def test_visualizer_writes_png_and_svg(sweep: Path, tmp_path: Path) -> None:
    # A benchmark JSON in the schema of scripts/benchmark.py, with a skipped row.
    bench = tmp_path / "bench.json"
    layers = {"attention": 1.0, "grassmann-naive": 6.0, "grassmann-fast": 2.0}
    mixer = [{"L": L, "B": 4096 // L, "tokens": 4096, "layer": layer, "ms": ms * L / 256, "peak_mb": L / 4.0}
             for L in (256, 1024) for layer, ms in layers.items()]
    mixer.append({"L": 256, "B": 16, "tokens": 4096, "layer": "grassmann-fused", "skipped": "no Triton"})
    model = [{"L": L, "N": N, "B": B, "tokens": B * L, "model": name, "mode": "eager", "ms": ms,
              "tokens_per_s": B * L / (ms / 1e3)}
             for L, N, B in ((128, 6, 32), (256, 12, 16)) for name, ms in (("transformer", 10.0),
                                                                        ("grassmann-fast", 20.0))]
    bench.write_text(json.dumps({"env": {"device": "synthetic", "date": "2026-01-01"},
                                 "mixer": mixer, "model": model, "projection": None}))
    out = tmp_path / "images"
    proc = _run_script("visualize_results.py", str(sweep), "--out", str(out), "--bench", str(bench))
    assert proc.returncode == 0, proc.stderr
    stems = ["wikitext_results", "snli_results", "wikitext_val_curves", "snli_val_curves", "speed_scaling"]
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{stem}.svg").read_text()[:2000]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in stems for e in ("png", "svg"))
