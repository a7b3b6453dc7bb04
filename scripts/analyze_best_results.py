#!/usr/bin/env python
"""Tabulate the best validation results of a sweep against the paper and public reproductions.

Usage:
    python scripts/analyze_best_results.py [OUTPUT_DIR] [--published PATH]

OUTPUT_DIR defaults to the newest timestamped directory under `outputs/`. Every
`results.json` below it is read. The script prints markdown tables per task (WikiText-2,
SNLI) and writes `best_results_summary.json` into OUTPUT_DIR.

* Configurations (model, L, N, preset, tag, corpus) are summarised over seeds as
  mean ± sample std; runs that did not complete (diverged, interrupted) are listed and
  kept out of the means.
* The Grassmann/Transformer gap comes with a Welch 95% confidence interval (PPL ratio
  on the log scale for WikiText-2, accuracy difference for SNLI); see `_results.py`.
* Only runs on the official splits (corpus "full") appear under "Paper comparison";
  reduced or custom corpora are reported under "Reduced-corpus results (not comparable
  with the paper)", and the published rows are then shown separately, for reference only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _results import (
    PUBLISHED_JSON, SECTION_TITLES, Config, Gap, ResultsError, Run, Stat, TaskSummary,
    json_safe, load_published, load_runs, resolve_output_dir, summarize,
)

SUMMARY_NAME = "best_results_summary.json"
TASK_TITLES = {"wikitext": "WikiText-2", "snli": "SNLI"}


def _fmt_value(value: float | None, task: str) -> str:
    """A PPL with two decimals, an accuracy as a percentage."""
    if value is None:
        return "—"
    return f"{value:.2f}" if task == "wikitext" else f"{100 * value:.2f}%"


def _fmt_stat(stat: Stat, task: str) -> str:
    """"mean ± std" (std over seeds), or the single value."""
    if stat.n == 0:
        return "—"
    if stat.std is None:
        return _fmt_value(stat.mean, task)
    spread = f"{stat.std:.2f}" if task == "wikitext" else f"{100 * stat.std:.2f} pp"
    return f"{_fmt_value(stat.mean, task)} ± {spread}"


def _fmt_plain(stat: Stat, digits: int) -> str:
    """The mean, with `digits` decimals only when it averages several seeds."""
    return "—" if stat.n == 0 else f"{stat.mean:,.{digits if stat.n > 1 else 0}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def config_table(configs: list[Config], task: str) -> str:
    """One row per configuration: ours (over seeds) and published (single values)."""
    metric = "PPL" if task == "wikitext" else "acc"
    header = ["source", "model", "L", "N", "preset", "tag/variant", "corpus"]
    header += ["SNLI mode"] if task == "snli" else []
    header += ["params", f"best val {metric}", "seeds", "best epoch",
               f"test {metric} (best ckpt)", "tokens/s"]
    rows = []
    for c in configs:
        k = c.key
        row = [c.source_label, k.model, str(k.seq_len or "—"), str(k.n_layers or "—"),
               k.preset or "—", k.tag or "—", k.corpus]
        row += [k.snli_mode or "—"] if task == "snli" else []
        row += [
            f"{c.params_m:.2f}M" if c.params_m else "—",
            _fmt_stat(c.stat("best_val"), task),
            "published" if c.n_seeds is None else str(c.n_seeds),
            _fmt_plain(c.stat("best_epoch"), 1),
            _fmt_stat(c.stat("test"), task),
            _fmt_plain(c.stat("tokens_per_s"), 0),
        ]
        rows.append(row)
    return _table(header, rows)


def _fmt_gap(measure: dict | None) -> tuple[str, str]:
    """(estimate, 95% CI) cells of one gap measure."""
    if measure is None:
        return "—", "—"
    if measure["kind"] == "ratio":
        estimate = f"{measure['estimate']:.3f}×"
        ci = measure["ci95"] and f"[{measure['ci95'][0]:.3f}, {measure['ci95'][1]:.3f}]"
    else:
        estimate = f"{100 * measure['estimate']:+.2f} pp"
        ci = measure["ci95"] and f"[{100 * measure['ci95'][0]:+.2f}, {100 * measure['ci95'][1]:+.2f}] pp"
    if ci:
        ci += f" (Welch df={measure['df']:.1f})"
    return estimate, ci or measure["note"]


def gap_table(gaps: list[Gap], task: str) -> str:
    """Grassmann vs Transformer per matched pair, on best validation and on test."""
    kind = "G/T PPL ratio" if task == "wikitext" else "G − T accuracy"
    header = ["source", "L", "N", "preset", "tag/variant", "corpus", "seeds G/T",
              f"best val {kind}", "95% CI", f"test {kind}", "95% CI"]
    rows = []
    for gap in gaps:
        k, d = gap.grassmann.key, gap.to_json()
        seeds = ("published" if gap.grassmann.n_seeds is None
                 else f"{gap.grassmann.n_seeds}/{gap.transformer.n_seeds}")
        tag = k.tag if k.tag == gap.transformer.key.tag else f"{k.tag} (vs untagged T)"
        rows.append([gap.grassmann.source_label, str(k.seq_len or "—"), str(k.n_layers or "—"),
                     k.preset or "—", tag or "—", k.corpus, seeds,
                     *_fmt_gap(d["best_val"]), *_fmt_gap(d["test"])])
    return _table(header, rows)


def runs_table(runs: list[Run], task: str) -> str:
    """Every run of the task, with the corpus it used and whether it counts."""
    header = ["run", "seed", "corpus", "data_dir", "status", "in means", "best val", "best epoch"]
    rows = [[r.name, str(r.data.get("seed")), r.data.get("corpus", "unknown"),
             str(r.data.get("data_dir", "—")), r.status, "yes" if r.included else "no",
             _fmt_value(r.best_val, task), str(r.data.get("best_epoch", "—"))]
            for r in runs]
    return _table(header, rows)


def task_markdown(summary: TaskSummary) -> str:
    """The report for one task."""
    task = summary.task
    out = [f"## {TASK_TITLES[task]}"]
    if not summary.runs:
        out.append("No runs for this task in this directory.")
    for name, configs in summary.sections.items():
        if not configs:
            continue
        out.append(f"### {SECTION_TITLES[name]}")
        if name == "published_reference" and summary.runs:
            out.append("Published single numbers at settings with no full-corpus run of ours; "
                       "not a comparison with the runs above.")
        out.append(config_table(configs, task))
        gaps = summary.gaps(name)
        if gaps:
            out.append(gap_table(gaps, task))
    if summary.runs:
        out.append("### Runs")
        out.append(runs_table(summary.runs, task))
        excluded = summary.excluded_runs
        if excluded:
            listed = ", ".join(f"{r.name} ({r.status})" for r in excluded)
            out.append(f"Excluded from all means and gaps: {len(excluded)} run(s) that did not "
                       f"complete: {listed}.")
    return "\n\n".join(out)


def report_markdown(output_dir: Path, runs: list[Run], summaries: dict[str, TaskSummary]) -> str:
    corpora = sorted({r.data.get("corpus", "unknown") for r in runs})
    head = [
        f"# Best results: `{output_dir}`",
        f"{len(runs)} run(s); corpora used: {', '.join(corpora)}. Only corpus \"full\" (the "
        "official splits) is compared with the paper.",
        "Our rows: mean ± sample std (n−1) over completed seeds. Gaps: WikiText-2 ratio "
        "exp(mean log PPL_G − mean log PPL_T) (ratio of geometric means) with Welch's 95% "
        "t interval on log PPL; SNLI difference of mean accuracies with Welch's 95% t "
        "interval; no interval with one seed. Published rows are single reported runs.",
    ]
    return "\n\n".join(head + [task_markdown(s) for s in summaries.values()]) + "\n"


def summary_json(output_dir: Path, published_path: Path, runs: list[Run],
                 summaries: dict[str, TaskSummary]) -> dict:
    return {
        "schema_version": 1,
        "generated_by": "scripts/analyze_best_results.py",
        "output_dir": str(output_dir),
        "published_file": str(published_path),
        "statistics": {
            "center": "mean over completed seeds",
            "spread": "sample standard deviation (ddof=1); null with one seed",
            "gap_ci": "Welch t interval, 95%, t quantile from the regularised incomplete beta; "
                      "WikiText-2 on log PPL then exponentiated (ratio of geometric means); "
                      "SNLI on accuracy; null with fewer than two seeds per side",
            "excluded": "runs whose status is not 'completed' are kept out of all statistics",
        },
        "runs": [{
            "run_name": r.name, "path": str(r.path.parent), "task": r.task,
            "model": r.data["model"], "seq_len": r.data.get("seq_len"),
            "n_layers": r.data.get("n_layers"), "preset": r.data.get("preset"),
            "tag": r.data.get("tag") or "", "seed": r.data.get("seed"),
            "corpus": r.data.get("corpus", "unknown"), "snli_mode": r.data.get("snli_mode"),
            "status": r.status, "included": r.included, "best_val": r.best_val,
            "best_epoch": r.data.get("best_epoch"), "test": r.test,
        } for r in runs],
        "tasks": {task: s.to_json() for task, s in summaries.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", help="sweep directory (default: newest under outputs/)")
    parser.add_argument("--published", type=Path, default=PUBLISHED_JSON,
                        help="published reference numbers (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        output_dir = resolve_output_dir(args.output_dir)
        runs = load_runs(output_dir)
        published = load_published(args.published)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summaries = summarize(runs, published)
    print(report_markdown(output_dir, runs, summaries))
    path = output_dir / SUMMARY_NAME
    summary = json_safe(summary_json(output_dir, args.published, runs, summaries))
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)  # stderr, so stdout stays pure markdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
