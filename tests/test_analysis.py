"""Tests of grassmann_flows.analysis and its entry points (scripts/analyze_best_results.py,
scripts/visualize_results.py, scripts/make_record.py), on the synthetic fixture sweeps in
tests/fixtures/results/ (not real results)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
FIXTURE = REPO / "tests" / "fixtures" / "results" / "synthetic_output"
MIXED = FIXTURE.parent / "mixed_output"  # every kind of run side by side (make_mixed_fixture)

from grassmann_flows.bench import results as _bench  # noqa: E402
from grassmann_flows.analysis import load, summary as _summary  # noqa: E402
from grassmann_flows.analysis import stats as _stats  # noqa: E402

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
    """The report and the summary JSON of `sweep` (written beside it, never into it)."""
    out = sweep.parent / "analysis"
    proc = _run_script("analyze_best_results.py", str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not list(sweep.rglob("best_results_summary.json"))
    return proc.stdout, json.loads((out / "best_results_summary.json").read_text())


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
    assert _stats.student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert _stats.student_t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)
    assert _stats.student_t_cdf(expected, df) == pytest.approx(0.975, abs=1e-7)


def test_welch_interval_known_case() -> None:
    # Equal sizes and variances: Welch df = 2(n-1) = 4, se = sqrt(1/3 + 1/3).
    a, b = _stats.make_stat([1.0, 2.0, 3.0]), _stats.make_stat([2.0, 3.0, 4.0])
    interval = _stats.welch_interval(a, b)
    half = 2.776445 * math.sqrt(2 / 3)
    assert interval.df == pytest.approx(4.0)
    assert interval.difference == pytest.approx(-1.0)
    assert (interval.low, interval.high) == pytest.approx((-1 - half, -1 + half), abs=1e-5)


@pytest.mark.parametrize("maker, committed", [("make_fixture", FIXTURE), ("make_mixed_fixture", MIXED)])
def test_fixture_is_what_the_generator_writes(tmp_path: Path, maker: str, committed: Path) -> None:
    regenerated = getattr(_load_make_fixture(), maker)(tmp_path / "fresh")
    # No stale files in the committed copy.
    assert sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(regenerated) for p in regenerated.rglob("*") if p.is_file())
    for path in (p for p in regenerated.rglob("*") if p.is_file()):
        rel = path.relative_to(regenerated)
        assert (committed / rel).read_text() == path.read_text(), rel


# --------------------------------------------------------------------------- analyser


# The fixture's duplicates (see make_fixture.py): an older completed copy and a newer
# interrupted copy, each of which must give way to its twin.
DROPPED = {"transformer_wikitext_L32_N2_s1", "2026-01-02_00-00-00/grassmann_wikitext_L32_N2_s0"}


def _variant(data: dict, config: dict) -> tuple:
    """(task, model, tag, lr, block, extra_proj, snli_mode) straight from the two JSON files."""
    model = config.get("model") or {}
    extra = (model.get("mixer") or {}).get("extra_proj") if data["model"] == "grassmann" else None
    return (data["task"], data["model"], data["tag"], config["train"]["lr"], model.get("block"), extra,
            data.get("snli_mode"))


def _independent_groups(sweep: Path) -> dict[tuple, list[dict]]:
    """Completed, non-duplicate runs of the fixture grouped by variant, read straight from disk."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in sweep.rglob("results.json"):
        if str(path.parent.relative_to(sweep)) in DROPPED:
            continue
        data = json.loads(path.read_text())
        if data["status"] == "completed":
            groups[_variant(data, json.loads(path.with_name("config.json").read_text()))].append(data)
    return groups


def _by_model(groups: dict[tuple, list[dict]]) -> dict[tuple, dict[float, list[dict]]]:
    """Per variant without lr: {lr: runs}."""
    by_model: dict[tuple, dict[float, list[dict]]] = defaultdict(dict)
    for key, runs in groups.items():
        by_model[key[:3] + key[4:]][key[3]] = runs
    return by_model


def _on_common_seeds(by_lr: dict[float, list[dict]]) -> dict[float, list[dict]]:
    """Each lr's runs on the seeds that every lr has (all runs when they share none)."""
    common = set.intersection(*({r["seed"] for r in runs} for runs in by_lr.values()))
    return {lr: [r for r in runs if r["seed"] in common] for lr, runs in by_lr.items()} if common else by_lr


def _chosen(groups: dict[tuple, list[dict]]) -> dict[tuple, list[dict]]:
    """Per variant without lr, the runs of the lr with the best mean validation on common seeds."""
    out = {}
    for key, by_lr in _by_model(groups).items():
        metric, sign = ("best_val_ppl", 1) if key[0] == "wikitext" else ("best_val_acc", -1)
        compared = _on_common_seeds(by_lr)
        lr = min(by_lr, key=lambda lr: sign * np.mean([r[metric] for r in compared[lr]]))
        out[key[:3] + (lr,) + key[3:]] = by_lr[lr]
    return out


def _ours(summary: dict, task: str, section: str = "reduced_corpus") -> dict[tuple, dict]:
    return {(task, c["model"], c["tag"], c["lr"], c["block"], c["extra_proj"], c["snli_mode"]): c
            for c in summary["tasks"][task]["sections"][section]["configs"] if c["source"] == "ours"}


def _gaps(summary: dict, task: str = "wikitext", section: str = "reduced_corpus") -> dict[tuple, dict]:
    return {(g["pairing"], g["grassmann_tag"]): g for g in summary["tasks"][task]["sections"][section]["gaps"]}


def test_means_and_stds_match_an_independent_computation(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    ours = {**_ours(summary, "wikitext"), **_ours(summary, "snli")}
    groups = _chosen(_independent_groups(sweep))
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
        assert config["train_time_s"]["mean"] == pytest.approx(np.mean([r["train_time_s"] for r in runs]))
        if len(runs) > 1:
            assert config["best_val"]["std"] == pytest.approx(best.std(ddof=1), rel=1e-12)
            assert config["test"]["std"] == pytest.approx(test.std(ddof=1), rel=1e-12)
            if metric == "ppl":
                assert f"{best.mean():.2f} ± {best.std(ddof=1):.2f}" in markdown
        else:
            assert config["best_val"]["std"] is None
    # The wall-clock column: mean training time in minutes.
    t_pre = ours[("wikitext", "transformer", "", 6e-4, "preln", None, None)]
    assert "| train time |" in markdown and f"{t_pre['train_time_s']['mean'] / 60:,.1f} min" in markdown


def _welch_ratio(log_g: np.ndarray, log_t: np.ndarray) -> tuple[float, float, list[float]]:
    """(ratio, df, [low, high]) computed here with numpy and the t quantile."""
    var_g, var_t = log_g.var(ddof=1) / len(log_g), log_t.var(ddof=1) / len(log_t)
    df = (var_g + var_t) ** 2 / (var_g ** 2 / (len(log_g) - 1) + var_t ** 2 / (len(log_t) - 1))
    half = _stats.student_t_quantile(0.975, df) * math.sqrt(var_g + var_t)
    diff = log_g.mean() - log_t.mean()
    return math.exp(diff), df, [math.exp(diff - half), math.exp(diff + half)]


def test_gap_ratio_and_interval(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    gaps = _gaps(summary)
    groups = _chosen(_independent_groups(sweep))
    log_g = np.log([r["best_val_ppl"] for r in groups[("wikitext", "grassmann", "", 1e-3, "paper_postln", "g", None)]])
    log_t = np.log([r["best_val_ppl"] for r in groups[("wikitext", "transformer", "", 6e-4, "preln", None, None)]])
    ratio, df, ci = _welch_ratio(log_g, log_t)
    measure = gaps[("G-paper vs T-preLN", "")]["best_val"]
    assert measure["kind"] == "ratio"
    assert measure["estimate"] == pytest.approx(ratio, rel=1e-12)
    assert measure["df"] == pytest.approx(df, rel=1e-12)
    assert measure["ci95"] == pytest.approx(ci, rel=1e-9)
    # One seed on a side: a point estimate, no interval.
    nonorm = gaps[("G-paper vs T-preLN", "nonorm")]
    assert nonorm["transformer_tag"] == "" and nonorm["best_val"]["ci95"] is None
    assert nonorm["best_val"]["note"] == "n/a (1 seed)"
    snli_gaps = summary["tasks"]["snli"]["sections"]["reduced_corpus"]["gaps"]
    assert {g["snli_mode"] for g in snli_gaps} == {"scratch", "distilbert"}
    assert all(g["best_val"]["kind"] == "difference" and g["best_val"]["note"] == "n/a (1 seed)" for g in snli_gaps)
    assert "n/a (1 seed)" in markdown


def test_controls_are_paired_by_their_config_fields(sweep: Path) -> None:
    """G-paper vs T-preLN, G-paper vs T-postLN and G-no-extra vs T, whatever the directory names."""
    markdown, summary = _analyze(sweep)
    gaps = _gaps(summary)
    assert set(gaps) == {("G-paper vs T-preLN", ""), ("G-paper vs T-postLN", ""),
                         ("G-no-extra vs T-preLN", ""), ("G-paper vs T-preLN", "nonorm")}
    post = gaps[("G-paper vs T-postLN", "")]
    assert post["transformer_block"] == "postln" and post["transformer_tag"] == "ctl"
    no_extra = gaps[("G-no-extra vs T-preLN", "")]
    assert no_extra["grassmann_extra_proj"] == "none" and no_extra["transformer_block"] == "preln"
    groups = _independent_groups(sweep)
    log_g = np.log([r["best_val_ppl"] for r in groups[("wikitext", "grassmann", "", 6e-4, "paper_postln", "none", None)]])
    log_t = np.log([r["best_val_ppl"] for r in groups[("wikitext", "transformer", "", 6e-4, "preln", None, None)]])
    assert no_extra["best_val"]["estimate"] == pytest.approx(_welch_ratio(log_g, log_t)[0], rel=1e-12)
    assert "| ours | G-paper vs T-postLN |" in markdown and "| ours | G-no-extra vs T-preLN |" in markdown


def test_one_transformer_pairs_with_every_preset_that_trains_it() -> None:
    """A Transformer trained once, under the first preset that gives it, is the baseline of
    every Grassmann preset with the same shared settings, and of no other."""
    plain, ffn_drop = (0.1, 0.0, "gpt2"), (0.1, 0.1, "gpt2")  # (dropout, ffn_dropout, init)
    shared = {"paper": plain, "preln_per_layer": plain, "preln_all_offsets": ffn_drop}

    def config(model: str, preset: str | None, block: str | None = None,
               settings: tuple | None = None) -> _summary.Config:
        key = _summary.ConfigKey(source="ours", task="wikitext", model=model, seq_len=128, n_layers=6,
                                 preset=preset, tag="", corpus="full", snli_mode=None, block=block,
                                 extra_proj="g" if preset == "paper" else ("none" if model == "grassmann" else None),
                                 shared=settings or shared.get(preset or ""))
        return _summary.Config(key)

    grassmann = [config("grassmann", p) for p in ("paper", "preln_all_offsets", "preln_per_layer")]
    t_paper = config("transformer", "paper", "preln")
    gaps = _summary.pair_configs(grassmann + [t_paper])
    # preln_all_offsets trains its Transformer with FFN dropout: T-paper is not its baseline
    assert sorted(g.grassmann.key.preset for g in gaps) == ["paper", "preln_per_layer"]
    assert all(g.transformer is t_paper for g in gaps)
    t_all = config("transformer", "preln_all_offsets", "preln")
    gaps = _summary.pair_configs(grassmann + [t_paper, t_all])
    assert {g.grassmann.key.preset: g.transformer for g in gaps} == {
        "paper": t_paper, "preln_per_layer": t_paper, "preln_all_offsets": t_all}
    # Runs without config.json (no shared settings known) fall back to a Transformer keyed
    # without a preset.
    anonymous = config("transformer", None, "preln", settings=())
    bare = [_summary.Config(replace(g.key, shared=None)) for g in grassmann]
    gaps = _summary.pair_configs(bare + [anonymous])
    assert len(gaps) == 3 and all(g.transformer is anonymous for g in gaps)


def test_distilbert_heads_pair_with_the_joint_and_the_siamese_transformer() -> None:
    """The siamese Transformer head (the Grassmann head's classifier on sentences encoded
    apart) is a second, labelled partner, never a seed of the joint head."""
    def config(model: str, head: str | None) -> _summary.Config:
        return _summary.Config(_summary.ConfigKey(
            source="ours", task="snli", model=model, seq_len=48, n_layers=2, preset=None, tag="",
            corpus="full", snli_mode="distilbert", head=head))

    grassmann, joint, siamese = config("grassmann", None), config("transformer", "joint"), config("transformer", "siamese")
    assert joint.key != siamese.key
    gaps = _summary.pair_configs([grassmann, joint, siamese])
    assert sorted((g.transformer.key.label, g.grassmann.key.label) for g in gaps) == [("T", "G"), ("T-siamese", "G")]


def test_lr_is_chosen_on_validation_never_on_test(sweep: Path) -> None:
    """At lr 1e-3 the fixture's Grassmann validates better and tests worse than at 6e-4."""
    markdown, summary = _analyze(sweep)
    groups = _independent_groups(sweep)
    runs = {lr: groups[("wikitext", "grassmann", "", lr, "paper_postln", "g", None)] for lr in (6e-4, 1e-3)}
    val = {lr: np.mean([r["best_val_ppl"] for r in rs]) for lr, rs in runs.items()}
    test = {lr: np.mean([r["test"]["ppl"] for r in rs]) for lr, rs in runs.items()}
    assert val[1e-3] < val[6e-4] and test[1e-3] > test[6e-4]  # the fixture really disagrees
    config = _ours(summary, "wikitext")[("wikitext", "grassmann", "", 1e-3, "paper_postln", "g", None)]
    assert config["lr"] == 1e-3
    assert config["test"]["mean"] == pytest.approx(test[1e-3], rel=1e-12)
    assert sorted(config["seeds"]) == sorted(r["seed"] for r in runs[1e-3])
    assert [c["lr"] for c in config["lr_selection"]] == [6e-4, 1e-3]
    # The Transformer's better validation is at 6e-4: each model gets its own lr.
    assert ("wikitext", "transformer", "", 6e-4, "preln", None, None) in _ours(summary, "wikitext")
    assert "| grassmann | G-paper | 32 | 2 | paper | — | 0.001 | 0, 1, 2 | 3 |" in markdown and "**chosen**" in markdown
    assert config["lr_selection_seeds"] == [0, 1, 2]


def test_duplicates_keep_the_newest_finished_copy(sweep: Path) -> None:
    proc = _run_script("analyze_best_results.py", str(sweep), "--out", str(sweep.parent))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((sweep.parent / "best_results_summary.json").read_text())
    dropped = summary["tasks"]["wikitext"]["dropped_duplicates"]
    assert {str(Path(d["dropped"]).relative_to(sweep)) for d in dropped} == DROPPED
    assert sum("dropped duplicate run" in line for line in proc.stderr.splitlines()) == 2
    newer = json.loads((sweep / "2026-01-02_00-00-00" / "transformer_wikitext_L32_N2_s1" / "results.json").read_text())
    config = _ours(summary, "wikitext")[("wikitext", "transformer", "", 6e-4, "preln", None, None)]
    assert config["seeds"] == [0, 1, 2] and newer["best_val_ppl"] in config["best_val"]["values"]
    g_paper = config = [c for c in summary["tasks"]["wikitext"]["sections"]["reduced_corpus"]["configs"]
                        if c["label"] == "G-paper" and c["tag"] == ""][0]
    assert next(c for c in g_paper["lr_selection"] if c["lr"] == 6e-4)["best_val"]["n"] == 3  # not 4


def test_snli_modes_pair_with_their_published_numbers(sweep: Path) -> None:
    """DistilBERT-head runs sit beside the paper's Table 3, from-scratch runs beside the reproductions'."""
    for path in sweep.rglob("results.json"):
        data = json.loads(path.read_text())
        if data["task"] == "snli":
            path.write_text(json.dumps(dict(data, corpus="full")))
    _, summary = _analyze(sweep)
    configs = summary["tasks"]["snli"]["sections"]["paper_comparison"]["configs"]
    published = {(c["source"], c["snli_mode"]) for c in configs if c["source"] != "ours"}
    assert ("paper", "distilbert") in published and ("alphaxiv_v1", "scratch") in published
    assert ("paper", "scratch") not in published and ("alphaxiv_v1", "distilbert") not in published
    gaps = summary["tasks"]["snli"]["sections"]["paper_comparison"]["gaps"]
    ours = [g for g in gaps if g["source"] == "ours"]
    assert sorted(g["snli_mode"] for g in ours) == ["distilbert", "scratch"]
    assert all(g["test"]["kind"] == "difference" for g in ours)


def test_custom_corpus_is_never_compared_with_the_paper(sweep: Path) -> None:
    markdown, summary = _analyze(sweep)
    assert PAPER_HEADING not in markdown
    assert REDUCED_HEADING in markdown
    assert "### Published results (reference only)" in markdown
    for task in load.TASKS:
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
    for config in summary["tasks"]["wikitext"]["sections"]["reduced_corpus"]["configs"]:
        assert "grassmann_wikitext_L32_N2_s3" not in config["run_names"]
    assert "Excluded from all means and gaps" in markdown
    assert "grassmann_wikitext_L32_N2_s3 (diverged)" in markdown


def test_default_output_dir_is_all_of_outputs(tmp_path: Path) -> None:
    """With no argument every run under outputs/ is read, not only the newest sweep."""
    for name in ("2026-01-02_00-00-00", "2026-11-24_10-00-00", "cpu-pilot"):
        shutil.copytree(FIXTURE / "transformer_wikitext_L32_N2_s0", tmp_path / name / "run")
    assert load.resolve_output_dir(None, tmp_path) == tmp_path
    assert len(load.load_runs(load.resolve_output_dir(None, tmp_path))) == 3


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


def _bench_doc(gpu: str | None) -> dict:
    """A benchmark JSON in the schema of scripts/benchmark.py, with a skipped row."""
    layers = {"attention": 1.0, "grassmann-naive": 6.0, "grassmann-fast": 2.0}
    mixer = [{"L": L, "B": 4096 // L, "tokens": 4096, "layer": layer, "ms": ms * L / 256, "peak_mb": L / 4.0}
             for L in (256, 1024) for layer, ms in layers.items()]
    mixer.append({"L": 256, "B": 16, "tokens": 4096, "layer": "grassmann-fused", "skipped": "no Triton"})
    model = [{"L": L, "N": N, "B": B, "tokens": B * L, "model": name, "mode": "eager", "ms": ms,
              "tokens_per_s": B * L / (ms / 1e3)}
             for L, N, B in ((128, 6, 32), (256, 12, 16)) for name, ms in (("transformer", 10.0),
                                                                        ("grassmann-fast", 20.0))]
    return {"env": {"device": gpu or "cpu x86_64", "gpu": gpu, "date": "2026-01-01"},
            "mixer": mixer, "model": model, "projection": None}


def test_bench_ratios_and_gpu_files(tmp_path: Path) -> None:
    (tmp_path / "a-cpu.json").write_text(json.dumps(_bench_doc(None)))
    (tmp_path / "b-gpu.json").write_text(json.dumps(_bench_doc("synthetic GPU")))
    assert [p.name for p in _bench.gpu_bench_files(tmp_path)] == ["b-gpu.json"]
    doc = _bench_doc("synthetic GPU")
    mixer = {(r["layer"], r["L"]): r["ratio"] for r in _bench.mixer_ratios(doc)}
    assert mixer == pytest.approx({("grassmann-fast", 256): 2.0, ("grassmann-fast", 1024): 2.0,
                                   ("grassmann-naive", 256): 6.0, ("grassmann-naive", 1024): 6.0})
    assert [r["ratio"] for r in _bench.model_ratios(doc)] == pytest.approx([2.0, 2.0])
    text = _bench.bench_markdown(tmp_path / "b-gpu.json")
    assert "| grassmann-naive | 256 | 6.000 | 1.000 | 6.00× |" in text and "2.00×" in text


def test_a_window_benchmark_split_over_files_is_read_as_one(tmp_path: Path) -> None:
    """scripts/gpu_window.sh times the mixer and the models in separate calls, one directory."""
    doc = _bench_doc("synthetic GPU")
    window = tmp_path / "2026-01-01_00-00-00"
    for part, rows in (("mixer", {"mixer": doc["mixer"], "model": []}), ("eager", {"mixer": [], "model": doc["model"]})):
        (window / part).mkdir(parents=True)
        (window / part / "gpu-2026-01-01.json").write_text(json.dumps({**doc, **rows}))
    assert _bench.gpu_bench_files(tmp_path) == [window]
    merged = _bench.load_bench(window)
    assert merged["mixer"] == doc["mixer"] and merged["model"] == doc["model"]
    assert _bench.mixer_ratios(merged) == _bench.mixer_ratios(doc) and _bench.model_ratios(merged)
    text = _bench.bench_markdown(window)
    assert "| grassmann-naive | 256 | 6.000 | 1.000 | 6.00× |" in text and "| grassmann-fast | 128 | 6 | 32 |" in text


def test_visualizer_writes_png_and_svg(sweep: Path, tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench_doc("synthetic GPU")))
    out = tmp_path / "images"
    proc = _run_script("visualize_results.py", str(sweep), "--out", str(out), "--bench", str(bench))
    assert proc.returncode == 0, proc.stderr
    stems = ["published_numbers", "param_breakdown", "wikitext_results", "snli_results", "wikitext_curves",
             "snli_curves", "speed_ratios"]
    assert set(stems) == set(_summary.FIGURES)  # every figure has its alt text, and only those
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{stem}.svg").read_text()[:2000]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in stems for e in ("png", "svg"))


def test_visualizer_draws_no_curves_when_no_run_finished(sweep: Path, tmp_path: Path) -> None:
    """A sweep whose runs were all cut (a budget ran out) still gets its figures, minus curves."""
    cut = tmp_path / "2026-01-01_00-00-00"
    run = next(p for p in sweep.rglob("results.json") if "wikitext" in p.parent.name).parent
    shutil.copytree(run, cut / run.name)
    results = json.loads((cut / run.name / "results.json").read_text())
    (cut / run.name / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    out = tmp_path / "images"
    proc = _run_script("visualize_results.py", str(cut), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "published_numbers.png").is_file() and not list(out.glob("*_curves.*"))


def test_committed_parameter_breakdown_is_current() -> None:
    """results/params/breakdown.json is what scripts/param_breakdown.py writes, and sums exactly."""
    sys.path.insert(0, str(SCRIPTS))
    import param_breakdown

    committed = json.loads((REPO / "results" / "params" / "breakdown.json").read_text())
    assert committed["rows"] == param_breakdown.rows()
    totals = {(r["model"], r["n_layers"]): r["total"] for r in committed["rows"]}
    assert totals == {("transformer", 6): 12_585_472, ("grassmann", 6): 13_001_920,
                      ("transformer", 12): 17_324_032, ("grassmann", 12): 18_156_928}
    for row in committed["rows"]:
        assert sum(row["components"].values()) == row["total"]


# --------------------------------------------------------------------------- blog section and records

BLOG_TEXT = "# Title\n\nProse before, 1234.\n\n<!-- results:begin -->\nstale\n<!-- results:end -->\n\nProse after.\n"


def _blog(sweep: Path, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    blog = tmp_path / "blog.md"
    if not blog.exists():
        blog.write_text(BLOG_TEXT)
    (tmp_path / "no_bench").mkdir(exist_ok=True)
    proc = _run_script("analyze_best_results.py", "--blog", str(blog), str(sweep),
                       "--bench-dir", str(tmp_path / "no_bench"))
    assert proc.returncode == 0, proc.stderr
    return blog, proc


def _marker_section(text: str) -> str:
    return text[text.index("<!-- results:begin -->"):text.index("<!-- results:end -->")]


def test_blog_section_regenerates_identically_between_the_markers(sweep: Path, tmp_path: Path) -> None:
    blog, _ = _blog(sweep, tmp_path)
    first = blog.read_text()
    assert first.startswith("# Title\n\nProse before, 1234.\n\n<!-- results:begin -->\n")
    assert first.endswith("<!-- results:end -->\n\nProse after.\n") and "stale" not in first
    _, proc = _blog(sweep, tmp_path)
    assert blog.read_text() == first and "unchanged" in proc.stderr
    section = _marker_section(first)
    assert "Reduced-corpus results (not comparable with the paper)" in section
    assert "Paper" not in section and "alphaXiv" not in section  # no published number beside these runs
    for stem in ("wikitext_results", "wikitext_curves"):  # several seeds per configuration
        assert f"![{_summary.FIGURES[stem]}](images/{stem}.png)" in section
    snli = section[section.index("### SNLI"):]  # one seed per configuration: no figure
    assert "images/snli_results.png" not in snli and "No figure yet" in snli


def _numbers(obj) -> list[float]:
    """Every number in a JSON document."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    values = obj.values() if isinstance(obj, dict) else obj
    return [v for item in values for v in _numbers(item)]


def _derived(groups: dict[tuple, list[dict]]) -> list[float]:
    """Means, stds and counts over seeds of every group, and every G-vs-T gap with its interval."""
    out: list[float] = []
    getters = [lambda r: r["best_val_ppl"] if r["task"] == "wikitext" else r["best_val_acc"],
               lambda r: r["test"]["ppl" if r["task"] == "wikitext" else "acc"],
               lambda r: r["best_epoch"], lambda r: r["train_time_s"], lambda r: r["tokens_per_s"],
               lambda r: r["params"], lambda r: len(r["epochs"])]
    common = [runs for by_lr in _by_model(groups).values() for runs in _on_common_seeds(by_lr).values()]
    for runs in list(groups.values()) + common:  # the lr choice compares common seeds
        out.append(len(runs))
        for get in getters:
            values = np.array([get(r) for r in runs], dtype=float)
            out += [values.mean()] + ([values.std(ddof=1)] if len(values) > 1 else [])
    for gk, g_runs in groups.items():
        for tk, t_runs in groups.items():
            if gk[1] != "grassmann" or tk[1] != "transformer" or (gk[0], gk[6]) != (tk[0], tk[6]):
                continue
            for get in getters[:2]:
                g, t = np.array([get(r) for r in g_runs]), np.array([get(r) for r in t_runs])
                if gk[0] == "wikitext":
                    if len(g) > 1 and len(t) > 1:
                        ratio, df, ci = _welch_ratio(np.log(g), np.log(t))
                        out += [ratio, df, *ci]
                    else:
                        out.append(math.exp(np.log(g).mean() - np.log(t).mean()))
                else:
                    out.append(g.mean() - t.mean())
    return out


def test_every_number_in_the_blog_section_comes_from_the_fixture(sweep: Path, tmp_path: Path) -> None:
    blog, _ = _blog(sweep, tmp_path)
    section = _marker_section(blog.read_text())
    # Code spans (paths, commands) and image lines are names, not numbers; so are these labels.
    text = re.sub(r"`[^`]*`|!\[[^\]]*\]\([^)]*\)", " ", section)
    for label in ("WikiText-2", "95% CI", "G/T", "lr G/T", "seeds G/T"):
        text = text.replace(label, " ")
    # A run's summary numbers only: not its per-epoch history, environment or model config,
    # whose many small integers would let almost any token pass.
    raw = [v for path in sweep.rglob("results.json")
           for key, value in json.loads(path.read_text()).items() if key not in ("epochs", "env")
           for v in _numbers(value)]
    raw += [json.loads(path.read_text())["train"]["lr"] for path in sweep.rglob("config.json")]
    n_files = len(list(sweep.rglob("results.json")))  # "Runs read: N"
    allowed = raw + _derived(_independent_groups(sweep)) + [n_files]
    tokens = re.findall(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?", text)
    assert len(tokens) > 50  # the section really holds the tables
    for token in tokens:
        x = float(token.replace(",", ""))
        decimals = len(token.split(".")[1]) if "." in token else 0
        tol = 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12
        scaled = [t for v in allowed for t in (v, 100 * v, v / 60, v / 1e6)]
        assert any(abs(abs(x) - abs(t)) <= tol for t in scaled), f"{token} traces to no fixture value"


def test_blog_draws_no_figure_from_one_seed(tmp_path: Path) -> None:
    """One seed per configuration (the CPU pilot): tables, but no result figure in the blog."""
    pilot = Path(shutil.copytree(REPO / "outputs" / "cpu-pilot-2026-11-30", tmp_path / "outputs" / "pilot"))
    section = _marker_section(_blog(pilot.parent, tmp_path)[0].read_text())
    assert "| G-paper[out] vs T-preLN |" in section
    assert "images/wikitext_results.png" not in section and "No figure yet" in section


def test_reduced_corpus_heading_says_when_the_models_are_smaller_than_the_papers(tmp_path: Path) -> None:
    """The committed pilot ran the paper's size, the CPU study a smaller one (d128)."""
    smaller = "a variant that names a size (e.g. d128) is smaller than the paper's models"
    sections = {}
    for name, expected in (("cpu-pilot-2026-11-30", False), ("cpu-study-2026-12-06", True)):
        runs = Path(shutil.copytree(REPO / "outputs" / name, tmp_path / name / "outputs" / name))
        sections[name] = _marker_section(_blog(runs.parent, tmp_path / name)[0].read_text())
        heading = next(line for line in sections[name].splitlines() if line.startswith("#### Reduced-corpus"))
        assert (smaller in heading) is expected, heading
    # The study's SNLI runs are encoders trained from scratch, not the paper's DistilBERT heads.
    study = sections["cpu-study-2026-12-06"]
    assert "SNLI from scratch. Epochs run: 4;" in study[study.index("### SNLI"):]


def test_blog_tables_have_at_most_eight_columns(sweep: Path, tmp_path: Path) -> None:
    """The blog's tables are for reading; the full tables are the analysis script's output."""
    blog, _ = _blog(sweep, tmp_path)
    rows = [line for line in _marker_section(blog.read_text()).splitlines() if line.startswith("|")]
    assert rows  # the section holds tables
    assert max(line.count("|") - 1 for line in rows) <= 8


def test_blog_without_runs_says_so_in_one_sentence(tmp_path: Path) -> None:
    empty = tmp_path / "outputs"
    empty.mkdir()
    blog, _ = _blog(empty, tmp_path)
    body = _marker_section(blog.read_text()).split("\n", 1)[1].strip().split("\n\n")
    assert body[0].startswith("*Generated by") and len(body) == 2
    assert body[1].startswith("No training run has been committed") and body[1].count(". ") == 0


def test_blog_and_figures_read_only_runs_git_tracks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repo = tmp_path / "repo"
    for name in ("kept", "local"):
        shutil.copytree(FIXTURE / "transformer_wikitext_L32_N2_s0", repo / "outputs" / name)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "outputs/kept"], check=True)
    runs = load.load_committed_runs(repo / "outputs", repo)
    assert [r.path.parent.name for r in runs] == ["kept"]
    assert "left out 1 run(s)" in capsys.readouterr().err


def test_committed_blog_and_readme_tables_are_current(tmp_path: Path) -> None:
    """blog.md's results section and README's records table are what the scripts write today."""
    blog = tmp_path / "blog.md"
    shutil.copyfile(REPO / "blog.md", blog)
    proc = _run_script("analyze_best_results.py", "--blog", str(blog))
    assert proc.returncode == 0, proc.stderr
    assert blog.read_text() == (REPO / "blog.md").read_text()
    readme = tmp_path / "README.md"
    shutil.copyfile(REPO / "README.md", readme)
    proc = _run_script("make_record.py", "--index-only", "--readme", str(readme))
    assert proc.returncode == 0, proc.stderr
    assert readme.read_text() == (REPO / "README.md").read_text()


def test_make_record_writes_a_record_and_its_index(sweep: Path, tmp_path: Path) -> None:
    records, readme = tmp_path / "records", tmp_path / "README.md"
    readme.write_text("# R\n\n<!-- records:begin -->\n<!-- records:end -->\n")
    args = ["make_record.py", str(sweep), "--records-dir", str(records), "--readme", str(readme),
            "--setting", "fixture", "--date", "2026-01-03", "--command", "./speedrun.sh all all"]
    assert _run_script(*args).returncode == 0
    record = records / "2026-01-03_fixture"
    snapshot = {p.relative_to(record): p.read_bytes() for p in record.rglob("*") if p.is_file()}
    first_readme = readme.read_text()
    proc = _run_script(*args)
    assert proc.returncode == 0, proc.stderr
    assert {p.relative_to(record): p.read_bytes() for p in record.rglob("*") if p.is_file()} == snapshot
    assert readme.read_text() == first_readme
    meta = json.loads((record / "record.json").read_text())
    assert meta["command"] == "./speedrun.sh all all" and meta["n_runs"] == 23
    assert "NOT comparable with the paper" in meta["label"]
    assert json.loads((record / "summary.json").read_text())["schema_version"] == 3
    assert (record / "runs" / "control_a_s0" / "metrics.jsonl").is_file()
    assert not list(record.rglob("*.pt"))
    assert "./speedrun.sh all all" in (record / "README.md").read_text()
    assert "[2026-01-03_fixture](records/2026-01-03_fixture/)" in first_readme
    # a second record: the index lists both, newest first
    later = [*args[:6], "--setting", "later", "--date", "2026-01-05", *args[10:]]
    assert _run_script(*later).returncode == 0
    index = readme.read_text()
    assert index.index("[2026-01-05_later]") < index.index("[2026-01-03_fixture]")
    bad = _run_script("make_record.py", str(sweep), "--records-dir", str(records), "--readme", str(readme),
                      "--setting", "../escape")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error:")


# --------------------------------------------------------------------------- a mix of every kind of run


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MIXED, tmp_path / "outputs"))


def test_every_entry_point_reads_a_mix_of_every_kind_of_run(mixed: Path, tmp_path: Path) -> None:
    """Old schema, QUICK, another width, controls, diverged, cut, eval-only: no crash, all three ways."""
    markdown, summary = _analyze(mixed)
    assert summary["tasks"]["wikitext"]["n_runs"] + summary["tasks"]["snli"]["n_runs"] == 23
    blog, _ = _blog(mixed, tmp_path)
    assert "QUICK" not in _marker_section(blog.read_text())  # smoke runs never reach the blog
    out = tmp_path / "figures"
    proc = _run_script("visualize_results.py", str(mixed), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert {p.stem for p in out.glob("*.png")} >= {"wikitext_results", "wikitext_curves", "snli_results", "snli_curves"}
    cut = [e for e in summary["tasks"]["wikitext"]["excluded_runs"] if e["status"] == "interrupted"]
    assert [e["run_name"] for e in cut] == ["grassmann_wikitext_L32_N2_s3"]


def test_quick_runs_are_never_compared_with_real_runs(mixed: Path) -> None:
    _, summary = _analyze(mixed)
    sections = summary["tasks"]["wikitext"]["sections"]
    quick = sections["quick"]["configs"]
    # marked by the results.json field, or only by train.max_steps_per_epoch (older runs)
    assert sorted(n for c in quick for n in c["run_names"]) == ["grassmann_quick_s0", "transformer_quick_s0",
                                                                 "transformer_quick_s1"]
    assert all(c["quick"] for c in quick)
    assert [g["pairing"] for g in sections["quick"]["gaps"]] == ["G-paper d64 ff256 vs T-preLN d64 ff256"]
    for name in ("paper_comparison", "reduced_corpus", "other_width"):
        assert not any(c["quick"] for c in sections[name]["configs"])
        assert not any("d64" in g["pairing"] for g in sections[name]["gaps"])


def test_model_width_is_part_of_the_configuration(mixed: Path) -> None:
    markdown, summary = _analyze(mixed)
    configs = summary["tasks"]["wikitext"]["sections"]["reduced_corpus"]["configs"]
    widths = {(c["label"], tuple(c["width"] or ())) for c in configs}
    assert ("G-paper d128 ff512", (128, 512, 4, 32)) in widths and ("G-paper", (256, 1024, 4, 32)) in widths
    d128 = next(c for c in configs if c["label"] == "G-paper d128 ff512")
    assert d128["run_names"] == ["grassmann_d128_s0"]  # never pooled with the d_model=256 seeds
    gaps = {g["pairing"] for g in summary["tasks"]["wikitext"]["sections"]["reduced_corpus"]["gaps"]}
    assert "G-paper d128 ff512 vs T-preLN d128 ff512" in gaps and "G-paper vs T-preLN" in gaps
    assert "| ours | G-paper d128 ff512 vs T-preLN d128 ff512 |" in markdown


def test_old_schema_runs_pool_with_new_runs_of_the_same_configuration(mixed: Path) -> None:
    """The pilot's config.json has no seed and no ffn_dropout (whose absence meant 0.0)."""
    _, summary = _analyze(mixed)
    configs = summary["tasks"]["wikitext"]["sections"]["reduced_corpus"]["configs"]
    paper = {c["label"]: c for c in configs}
    assert sorted(paper["G-paper"]["seeds"]) == [0, 1, 4]
    assert sorted(paper["T-preLN"]["seeds"]) == [0, 1, 4]


def test_snli_lr_follows_the_metric_direction_on_common_seeds(mixed: Path) -> None:
    """At seed 0, lr 6e-4 validates at 72% and 1e-3 at 70%: higher accuracy wins, so 6e-4.
    Seeds 1-2 exist only at 1e-3 (80%); over each lr's own seeds 1e-3 would win unfairly."""
    markdown, summary = _analyze(mixed)
    configs = summary["tasks"]["snli"]["sections"]["reduced_corpus"]["configs"]
    assert {c["model"]: c["lr"] for c in configs} == {"grassmann": 6e-4, "transformer": 6e-4}
    for config in configs:
        assert config["lr_selection_seeds"] == [0]
        assert [(c["lr"], c["best_val"]["values"]) for c in config["lr_selection"]] == [(6e-4, [0.72]), (1e-3, [0.70])]
    assert "| 0.001 | 0 | 1 | 70.00% |" in markdown


def test_snli_test_number_comes_from_eval_test_json(mixed: Path) -> None:
    markdown, summary = _analyze(mixed)
    configs = {c["model"]: c for c in summary["tasks"]["snli"]["sections"]["reduced_corpus"]["configs"]}
    assert configs["grassmann"]["test"]["values"] == [0.7011]  # not results.json's in-training test
    assert configs["transformer"]["test"]["values"] == [0.6822]  # results.json has no test at all
    assert all(c["test_sources"] == ["eval_test.json"] for c in configs.values())
    assert "| 70.11% | eval_test.json |" in markdown


def test_a_record_reproduces_its_test_numbers(mixed: Path, tmp_path: Path) -> None:
    """The record keeps eval_test.json, so its runs/ give the test numbers of the sweep."""
    records, readme = tmp_path / "records", tmp_path / "README.md"
    readme.write_text("<!-- records:begin -->\n<!-- records:end -->\n")
    proc = _run_script("make_record.py", str(mixed), "--records-dir", str(records), "--readme", str(readme),
                       "--setting", "mixed", "--date", "2026-01-03")
    assert proc.returncode == 0, proc.stderr

    def tests(summary: dict) -> list:
        return sorted((c["model"], c["test"]["values"], c["test_sources"])
                      for c in summary["tasks"]["snli"]["sections"]["reduced_corpus"]["configs"])

    assert tests(_analyze(records / "2026-01-03_mixed" / "runs")[1]) == tests(_analyze(mixed)[1])


def _script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summaries_and_figures_default_to_git_ignored_folders(sweep: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Analysis never writes into the runs it reads, nor into a tracked folder by default."""
    for folder in (load.ANALYSIS_DIR, load.FIGURES_DIR):
        probe = folder.relative_to(REPO) / "probe.png"
        assert subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(probe)]).returncode == 0, folder
    analyze, visualize = _script_module("analyze_best_results"), _script_module("visualize_results")
    monkeypatch.setattr(analyze, "ANALYSIS_DIR", tmp_path / "analysis")
    monkeypatch.setattr(visualize, "FIGURES_DIR", tmp_path / "figures")
    before = sorted(p for p in sweep.rglob("*"))
    assert analyze.main([str(sweep)]) == 0 and (tmp_path / "analysis" / "best_results_summary.json").is_file()
    assert visualize.main([str(sweep)]) == 0 and (tmp_path / "figures" / "wikitext_curves.png").is_file()
    assert sorted(p for p in sweep.rglob("*")) == before


def test_blog_images_take_no_output_dir(sweep: Path) -> None:
    proc = _run_script("visualize_results.py", str(sweep), "--blog-images")
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")


def test_full_corpus_runs_of_another_size_are_not_set_against_the_paper(mixed: Path) -> None:
    for path in mixed.rglob("results.json"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps(dict(data, corpus="full", seq_len=128, n_layers=6)))
    _, summary = _analyze(mixed)
    sections = summary["tasks"]["wikitext"]["sections"]
    assert {tuple(c["width"]) for c in sections["other_width"]["configs"]} == {(128, 512, 4, 32), (128, 512, 4, None)}
    # (the run cut before its first step has no config.json, so no known size)
    ours = [c for c in sections["paper_comparison"]["configs"] if c["source"] == "ours" and c["width"]]
    assert ours and all(c["width"][:3] == [256, 1024, 4] for c in ours)
    assert not any(g["source"] != "ours" for g in sections["other_width"]["gaps"])


def test_published_snli_rows_of_one_source_are_told_apart_by_variant(tmp_path: Path) -> None:
    from grassmann_flows.analysis.figures import _snli_table_rows

    doc = json.loads((REPO / "results" / "reference" / "published.json").read_text())
    source = next(iter(doc["sources"]))
    row = {"source": source, "task": "snli", "model": "grassmann", "snli_mode": "scratch", "notes": ""}
    doc["rows"] = [dict(row, variant="README revision A", metrics={"test_acc": 0.66}),
                   dict(row, variant="README revision B", metrics={"test_acc": 0.71})]
    path = tmp_path / "published.json"
    path.write_text(json.dumps(doc))
    rows = _snli_table_rows(_summary.load_published(path))
    label = doc["sources"][source]["label"]
    assert [r[:3] + r[-1:] for r in rows] == [[label, "README revision A", "scratch", "66.00%"],
                                              [label, "README revision B", "scratch", "71.00%"]]


def test_lr_choice_compares_common_seeds_and_keeps_seedless_runs() -> None:
    """Old runs without a seed count as one seed of their own; seed 1 exists only at 6e-4."""
    def run(lr: float, seed: int | None, ppl: float) -> load.Run:
        data = {"task": "wikitext", "model": "grassmann", "best_val_ppl": ppl, "run_name": f"lr{lr}_s{seed}"}
        return load.Run(Path(f"/runs/{lr}/{seed}/results.json"), {**data, **({} if seed is None else {"seed": seed})},
                        {"train": {"lr": lr}})

    runs = [run(1e-3, None, 10.0), run(1e-3, 0, 12.0), run(6e-4, None, 11.0), run(6e-4, 0, 13.0), run(6e-4, 1, 1.0)]
    [chosen] = _summary.select_lr(_summary.group_runs(runs))
    # On the common seeds (none, 0) the means are 12.0 (6e-4) and 11.0 (1e-3): 1e-3 wins, although
    # 6e-4's mean over its own three seeds (8.33) is lower.
    assert chosen.lr_seeds == [None, 0]
    assert [(lr, stat.values) for lr, stat in chosen.lr_candidates] == [(6e-4, (11.0, 13.0)), (1e-3, (10.0, 12.0))]
    assert chosen.key.lr == 1e-3 and chosen.stat("best_val").n == 2


def test_wikitext_test_number_is_eval_test_json_blocks_ppl() -> None:
    data = {"task": "wikitext", "model": "grassmann", "test": {"loss": 5.0, "ppl": 148.4}}
    evaluated = load.Run(Path("/r/results.json"), data, {}, {"split": "test", "blocks": {"ppl": 150.2},
                                                             "sliding": {"ppl": 120.0}})
    assert (evaluated.test, evaluated.test_source) == (150.2, "eval_test.json")
    assert (load.Run(Path("/r/results.json"), data).test, load.Run(Path("/r/results.json"), data).test_source) == \
        (148.4, "results.json")
