"""Markdown tables of the analysis, the summary JSON, and the blog's generated results section.

Every number comes from `summary.TaskSummary`: our rows are mean ± sample std over seeds
at the lr chosen on validation, published rows single values.
"""

from __future__ import annotations

from pathlib import Path

from ..bench.results import bench_markdown
from .load import Run, display_path, run_facts
from .stats import Stat
from .summary import (BLOG_MIN_SEEDS, FIGURES, SECTION_TITLES, SNLI_MODE_TITLES, TASK_TITLES, Config, Gap, TaskSummary,
                      blog_figure_runs)

SUMMARY_NAME = "best_results_summary.json"
BLOG_BEGIN, BLOG_END = "<!-- results:begin -->", "<!-- results:end -->"


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


def _fmt_minutes(stat: Stat) -> str:
    """Mean training wall-clock in minutes (evaluation excluded)."""
    return "—" if stat.n == 0 else f"{stat.mean / 60:,.1f} min"


def _fmt_lr(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:g}"


def _table(header: list[str], rows: list[list[str]], keep: list[str] | None = None) -> str:
    """A markdown table; `keep` (column names, in order, each at its first place) narrows it."""
    if keep is not None:
        idx = [header.index(name) for name in keep]
        header, rows = [header[i] for i in idx], [[row[i] for i in idx] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def config_table(configs: list[Config], task: str, compact: bool = False) -> str:
    """One row per configuration: ours (over seeds, at the chosen lr) and published (single values).
    `compact`: the blog's eight columns."""
    metric = "PPL" if task == "wikitext" else "acc"
    header = ["source", "model", "variant", "L", "N", "preset", "tag/variant", "corpus"]
    header += ["SNLI mode"] if task == "snli" else []
    header += ["lr (chosen on val)", "params", f"best val {metric}", "seeds", "epochs", "best epoch",
               f"test {metric} (best ckpt)", "train time", "device", "tokens/s"]
    rows = []
    for c in configs:
        k = c.key
        row = [c.source_label, k.model, k.label, str(k.seq_len or "—"), str(k.n_layers or "—"),
               k.preset or "—", k.tag or "—", k.corpus]
        row += [k.snli_mode or "—"] if task == "snli" else []
        row += [
            _fmt_lr(k.lr),
            f"{c.params_m:.2f}M" if c.params_m else "—",
            _fmt_stat(c.stat("best_val"), task),
            "published" if c.n_seeds is None else str(c.n_seeds),
            _fmt_plain(c.stat("epochs_run"), 1),
            _fmt_plain(c.stat("best_epoch"), 1),
            _fmt_stat(c.stat("test"), task),
            _fmt_minutes(c.stat("train_time_s")),
            c.devices or "—",
            _fmt_plain(c.stat("tokens_per_s"), 0),
        ]
        rows.append(row)
    keep = ["variant", "L", "N", "lr (chosen on val)", "params", "seeds", f"best val {metric}",
            f"test {metric} (best ckpt)"]
    return _table(header, rows, keep if compact else None)


def lr_table(configs: list[Config], task: str, compact: bool = False) -> str:
    """The validation means behind each lr choice (only configurations run at several lrs)."""
    metric = "PPL" if task == "wikitext" else "acc"
    rows = []
    for c in configs:
        for lr, stat in c.lr_candidates:
            seeds = ("own seeds (no seed in common)" if c.lr_seeds is None
                     else ", ".join(map(str, c.lr_seeds)))
            rows.append([c.key.model, c.key.label, str(c.key.seq_len or "—"), str(c.key.n_layers or "—"),
                         c.key.preset or "—", c.key.tag or "—", _fmt_lr(lr), seeds, str(stat.n),
                         _fmt_stat(stat, task), "**chosen**" if lr == c.key.lr else ""])
    if not rows:
        return ""
    return _table(["model", "variant", "L", "N", "preset", "tag", "lr", "seeds compared", "n",
                   f"best val {metric} (mean ± std)", ""], rows,
                  ["variant", "lr", "seeds compared", "n", f"best val {metric} (mean ± std)", ""] if compact else None)


def fmt_gap(measure: dict | None) -> tuple[str, str]:
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


def gap_table(gaps: list[Gap], task: str, compact: bool = False) -> str:
    """Grassmann vs Transformer per matched pair, on best validation and on test."""
    kind = "G/T PPL ratio" if task == "wikitext" else "G − T accuracy"
    header = ["source", "pairing", "L", "N", "preset", "tag/variant", "corpus", "lr G/T", "seeds G/T",
              f"best val {kind}", "95% CI (val)", f"test {kind}", "95% CI (test)"]
    rows = []
    for gap in gaps:
        k, t, d = gap.grassmann.key, gap.transformer.key, gap.to_json()
        seeds = ("published" if gap.grassmann.n_seeds is None
                 else f"{gap.grassmann.n_seeds}/{gap.transformer.n_seeds}")
        tag = k.tag if k.tag == t.tag else f"{k.tag or '—'} / {t.tag or '—'}"
        lrs = "—" if k.lr is None and t.lr is None else f"{_fmt_lr(k.lr)}/{_fmt_lr(t.lr)}"
        rows.append([gap.grassmann.source_label, gap.pairing, str(k.seq_len or "—"), str(k.n_layers or "—"),
                     k.preset or "—", tag or "—", k.corpus, lrs, seeds,
                     *fmt_gap(d["best_val"]), *fmt_gap(d["test"])])
    keep = ["pairing", "L", "N", "seeds G/T", f"best val {kind}", "95% CI (val)", f"test {kind}", "95% CI (test)"]
    return _table(header, rows, keep if compact else None)


def runs_table(runs: list[Run], task: str) -> str:
    """Every run of the task, with the corpus it used and whether it counts."""
    # Only the data directory's name: the full path belongs to the machine the run was made on.
    header = ["run", "seed", "lr", "corpus", "data dir", "status", "in means", "best val", "best epoch",
              "test", "test from"]
    rows = [[r.name, str(r.seed), _fmt_lr(r.lr), r.data.get("corpus", "unknown"),
             Path(str(r.data.get("data_dir", "—"))).name, r.status + (" (QUICK)" if r.quick else ""),
             "yes" if r.included else "no", _fmt_value(r.best_val, task), str(r.data.get("best_epoch", "—")),
             _fmt_value(r.test, task), r.test_source if r.test is not None else "—"]
            for r in runs]
    return _table(header, rows)


def _section_body(summary: TaskSummary, name: str, configs: list[Config], compact: bool = False) -> list[str]:
    """Configuration table, lr choices and gaps of one section (`compact`: the blog's narrow tables)."""
    task = summary.task
    out = [config_table(configs, task, compact)]
    lrs = lr_table(configs, task, compact)
    if lrs:
        out += ["Learning rate chosen per model on validation, the mean over the seeds that every lr has "
                "(each lr's own seeds when they share none); test is never looked at:", lrs]
    gaps = summary.gaps(name)
    if gaps:
        out.append(gap_table(gaps, task, compact))
    return out


def _notes(summary: TaskSummary) -> list[str]:
    """Lines about excluded and dropped runs."""
    out = []
    excluded = summary.excluded_runs
    if excluded:
        listed = ", ".join(f"{r.name} ({r.status})" for r in excluded)
        out.append(f"Excluded from all means and gaps: {len(excluded)} run(s) that did not "
                   f"complete: {listed}.")
    if summary.dropped:
        listed = ", ".join(f"`{display_path(d.path.parent)}`" for d, _ in summary.dropped)
        out.append(f"Dropped as duplicates of a newer copy of the same configuration and seed: {listed}.")
    return out


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
        out += _section_body(summary, name, configs)
    if summary.runs:
        out.append("### Runs")
        out.append(runs_table(summary.runs, task))
        out += _notes(summary)
    return "\n\n".join(out)


def report_markdown(output_dir: Path, runs: list[Run], summaries: dict[str, TaskSummary]) -> str:
    corpora = sorted({r.data.get("corpus", "unknown") for r in runs})
    head = [
        f"# Best results: `{display_path(output_dir)}`",
        f"{len(runs)} run(s); corpora used: {', '.join(corpora)}. Only corpus \"full\" (the "
        "official splits) is compared with the paper.",
        "Our rows: mean ± sample std (n−1) over completed seeds, at the lr chosen on validation. "
        "Gaps: WikiText-2 ratio exp(mean log PPL_G − mean log PPL_T) (ratio of geometric means) "
        "with Welch's 95% t interval on log PPL; SNLI difference of mean accuracies with Welch's "
        "95% t interval; no interval with one seed. Published rows are single reported runs. "
        "Train time: training wall-clock per run, evaluation excluded.",
    ]
    return "\n\n".join(head + [task_markdown(s) for s in summaries.values()]) + "\n"


def summary_json(output_dir: Path, published_path: Path, runs: list[Run],
                 summaries: dict[str, TaskSummary]) -> dict:
    return {
        "schema_version": 3,
        "generated_by": "scripts/analyze_best_results.py",
        "output_dir": display_path(output_dir),
        "published_file": display_path(published_path),
        "statistics": {
            "center": "mean over completed seeds",
            "spread": "sample standard deviation (ddof=1); null with one seed",
            "gap_ci": "Welch t interval, 95%, t quantile from the regularised incomplete beta; "
                      "WikiText-2 on log PPL then exponentiated (ratio of geometric means); "
                      "SNLI on accuracy; null with fewer than two seeds per side",
            "excluded": "runs whose status is not 'completed' are kept out of all statistics",
            "duplicates": "one run per (configuration, seed): the newest completed copy",
            "lr": "per model configuration, the lr with the best mean validation over the seeds every "
                  "candidate lr has (all seeds when they share none); test reported at that lr from all its seeds",
            "test": "eval_test.json of the run where present, else the test evaluation in results.json",
        },
        "runs": [{
            "run_name": r.name, "path": display_path(r.path.parent), "task": r.task,
            "model": r.data["model"], "seq_len": r.data.get("seq_len"),
            "n_layers": r.data.get("n_layers"), "preset": r.data.get("preset"),
            "tag": r.data.get("tag") or "", "seed": r.seed, "lr": r.lr, "quick": r.quick, "width": r.width,
            "block": r.block, "extra_proj": r.extra_proj,
            "corpus": r.data.get("corpus", "unknown"), "snli_mode": r.data.get("snli_mode"),
            "status": r.status, "included": r.included, "best_val": r.best_val,
            "best_epoch": r.data.get("best_epoch"), "test": r.test, "test_source": r.test_source,
            "train_time_s": r.data.get("train_time_s"),
        } for r in runs],
        "tasks": {task: s.to_json() for task, s in summaries.items()},
    }


# --------------------------------------------------------------------------- blog section


def _run_dirs(runs: list[Run]) -> str:
    """The sweep directories the runs come from, as code spans."""
    return ", ".join(f"`{d}/`" for d in sorted({display_path(r.path.parent.parent) for r in runs}))


def _what_ran(configs: list[Config]) -> str:
    """One line on how the runs were made: SNLI set-up, epochs, seeds, devices (from the runs themselves)."""
    facts = run_facts([r for c in configs for r in c.included_runs])
    modes = sorted({c.key.snli_mode for c in configs if c.key.snli_mode})
    setup = f"SNLI {', '.join(SNLI_MODE_TITLES.get(m, m) for m in modes)}. " if modes else ""
    return (f"{setup}Epochs run: {', '.join(map(str, facts['epochs']))}; seeds: {', '.join(map(str, facts['seeds']))}; "
            f"device: {', '.join(facts['devices'])}.")


def blog_section(runs: list[Run], summaries: dict[str, TaskSummary], bench_files: list[Path],
                 source: str) -> str:
    """The generated results section of the blog (without the markers)."""
    command = "`python scripts/analyze_best_results.py --blog blog.md`"
    out = [f"*Generated by {command} from {source}; edit the script, not this section.*"]
    if not runs:
        out.append(f"No training run has been committed under `outputs/` yet; after "
                   f"`./speedrun.sh all wikitext`, {command} fills this section.")
    else:
        out.append(f"Runs read: {len(runs)}, from {_run_dirs(runs)}.")
    for task, summary in summaries.items():
        sections = {n: c for n, c in summary.sections.items() if n != "published_reference" and c}
        if not sections:
            continue
        out.append(f"### {TASK_TITLES[task]}")
        for name, configs in sections.items():
            title = SECTION_TITLES[name]
            if name == "reduced_corpus":
                title += ": the stand-in corpus, a different and much smaller training set"
                if any(c.key.width_label for c in configs):
                    title += "; a variant that names a size (e.g. d128) is smaller than the paper's models"
            out.append(f"#### {title}")
            out.append(_what_ran(configs))
            out += _section_body(summary, name, configs, compact=True)
        out += _notes(summary)
        if any(r.task == task for r in blog_figure_runs(summaries)):
            for stem in (f"{task}_results", f"{task}_curves"):
                out.append(f"![{FIGURES[stem]}](images/{stem}.png)")
        else:
            out.append(f"No figure yet: the blog draws them only from configurations with at least "
                       f"{BLOG_MIN_SEEDS} seeds (`python scripts/visualize_results.py` draws every run).")
    if bench_files:
        out.append("### Speed (GPU benchmark)")
        out += [bench_markdown(path) for path in bench_files]
        out.append(f"![{FIGURES['speed_ratios']}](images/speed_ratios.png)")
    return "\n\n".join(out)
