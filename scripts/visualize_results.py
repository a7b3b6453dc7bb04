#!/usr/bin/env python
"""Draw the project's figures from committed JSON.

Usage:
    python scripts/visualize_results.py [OUTPUT_DIR] [--bench FILE] [--out images/]

Everything is regenerated from committed JSON only: the runs' `results.json` and
`config.json` (OUTPUT_DIR, default every run under `outputs/` that git tracks),
`results/reference/published.json`, `results/params/breakdown.json` (written by
`scripts/param_breakdown.py`) and, for the speed figure, the GPU benchmark JSON of
`scripts/benchmark.py` (default: every `results/bench/*.json` measured on a GPU; the
newest by name is drawn).

Writes, as PNG and SVG, into --out (default `images/`):
  published_numbers   the paper's Tables 1-3 beside the public reproductions, per setting
  param_breakdown     parameters per component, both models, both paper settings
  <task>_results      our best validation and test numbers per configuration (mean ± std
                      over seeds, at the lr chosen on validation); runs on a reduced or
                      custom corpus are hatched and never drawn beside published numbers
  <task>_curves       training loss and validation loss (SNLI: accuracy) per epoch, mean
                      and one-std band over seeds, and a test panel at the best checkpoint
  speed_ratios        Grassmann mixer / attention and Grassmann / Transformer step time
The alt text of each figure is `_results.FIGURES`; the blog references them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from _results import (  # noqa: E402
    OURS, OUTPUTS_ROOT, PUBLISHED_JSON, REPO_ROOT, Config, ResultsError, TaskSummary,
    load_committed_runs, load_published, load_runs, pair_configs, run_facts, summarize,
)
from grassmann_flows.bench.results import (  # noqa: E402
    BENCH_DIR, BenchFileError, gpu_bench_files, load_bench, mixer_ratios, model_ratios,
)

COLORS = {"transformer": "#4C72B0", "grassmann": "#DD8452"}
LINESTYLES = ("-", "--", ":", "-.")
TASK_TITLES = {"wikitext": "WikiText-2", "snli": "SNLI"}
QUANTITY_TITLES = {
    ("wikitext", "best_val"): "best validation PPL (lower is better)",
    ("wikitext", "test"): "test PPL at the best-validation checkpoint",
    ("snli", "best_val"): "best validation accuracy (%)",
    ("snli", "test"): "test accuracy at the best-validation checkpoint (%)",
}
PARAMS_JSON = REPO_ROOT / "results" / "params" / "breakdown.json"
# Which paper table a published setting belongs to (for panel titles).
PAPER_TABLES = {(128, 6): "Table 1", (256, 12): "Table 2", ("distilbert",): "Table 3"}
# Stable SVG ids and no timestamps, so regenerating unchanged figures leaves git clean.
plt.rcParams["svg.hashsalt"] = "grassmann-flows"


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `fig` as PNG and SVG and close it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def _setting_title(task: str, setting: tuple) -> str:
    if task == "wikitext":
        title = f"L={setting[0]}, N={setting[1]}"
    else:
        title = {"distilbert": "SNLI, DistilBERT heads", "scratch": "SNLI, from scratch"}.get(
            setting[0], f"SNLI mode: {setting[0] or 'unspecified'}")
    return title


def _ordered_settings(configs: list[Config]) -> list[tuple]:
    """Distinct settings, those with runs of ours first, then by (L, N) or SNLI mode."""
    ours = {c.key.setting() for c in configs if c.key.source == OURS}
    return sorted({c.key.setting() for c in configs},
                  key=lambda s: (s not in ours, [(v is None, v if v is not None else 0) for v in s]))


def _group_label(group: dict[str, Config]) -> str:
    """x tick label of a bar pair: who, which pairing/preset/variant/lr, and (ours) which corpus."""
    g, t = group.get("grassmann"), group.get("transformer")
    k = next(iter(group.values())).key
    if k.source != OURS:
        return next(iter(group.values())).source_label + (f"\n{k.tag}" if k.tag else "")
    label = " vs ".join(c.key.label for c in (g, t) if c) + (f" ({k.preset})" if k.preset else "")
    tags = "/".join(dict.fromkeys(c.key.tag or "—" for c in (g, t) if c))
    lrs = "/".join(f"{c.key.lr:g}" for c in (g, t) if c and c.key.lr)
    label += (f"\ntag {tags}" if tags != "—" else "") + (f"\nlr {lrs}" if lrs else "")
    return label + ("" if k.comparable else f"\n[{k.corpus} corpus]")


def _bar_groups(configs: list[Config]) -> list[dict[str, Config]]:
    """Bar pairs of one panel: ours one per Grassmann/Transformer comparison of `pair_configs`
    (a Transformer may appear in several), published ones per source row; ours first.
    """
    ours = [c for c in configs if c.key.source == OURS]
    groups = [{"transformer": gap.transformer, "grassmann": gap.grassmann} for gap in pair_configs(ours)]
    paired = {id(c) for g in groups for c in g.values()}
    groups += [{c.key.model: c} for c in ours if id(c) not in paired]
    published: dict[tuple, dict[str, Config]] = {}
    for c in configs:
        if c.key.source != OURS:
            published.setdefault((c.key.source, c.key.preset, c.key.tag), {})[c.key.model] = c
    return groups + list(published.values())


def _draw_panel(ax: plt.Axes, task: str, quantity: str, configs: list[Config]) -> None:
    """Transformer and Grassmann bars per group; outliers are clipped and labelled."""
    scale = 1.0 if task == "wikitext" else 100.0  # accuracies are plotted in percent
    groups = [g for g in _bar_groups(configs) if any(c.stat(quantity).n for c in g.values())]
    if not groups:
        ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        return
    means = [c.stat(quantity).mean * scale for g in groups for c in g.values() if c.stat(quantity).n]
    # A failed run (e.g. a diverged baseline at PPL 1381) would flatten every other bar.
    cap = min(max(means), 2.5 * sorted(means)[len(means) // 2])
    width = 0.38
    for i, group in enumerate(groups):
        for j, model in enumerate(("transformer", "grassmann")):
            config = group.get(model)
            stat = config.stat(quantity) if config else None
            if not stat or stat.n == 0:
                continue
            ours = config.key.source == OURS
            height = min(stat.mean * scale, cap)
            x = i + (j - 0.5) * width
            ax.bar(x, height, width, color=COLORS[model], alpha=1.0 if ours else 0.55,
                   edgecolor="black" if ours else "none", linewidth=0.8,
                   hatch="//" if ours and not config.key.comparable else None)
            if stat.std is not None:
                ax.errorbar(x, height, yerr=stat.std * scale, color="black", capsize=3, linewidth=1)
            digits = 1 if task == "wikitext" else 2  # 85.45 vs 85.50 must stay distinguishable
            value = stat.mean * scale
            # Large (clipped) values in thousands, so neighbouring labels do not overlap.
            text = (f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.{digits}f}") + ("↑" if value > cap else "")
            if ours:
                text += f"\nn={stat.n}"
            ax.annotate(text, (x, height + (stat.std or 0) * scale), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    labels = [_group_label(g) for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=7, rotation=25, ha="right")
    ax.set_xlim(-0.7, max(len(groups), 2) - 0.3)  # keep bar widths alike across panels
    ax.set_ylim(0, cap * 1.22)
    ax.grid(axis="y", alpha=0.3)


def _model_legend(extra: list[Patch] = ()) -> list[Patch]:
    return [Patch(color=COLORS["transformer"], label="Transformer"),
            Patch(color=COLORS["grassmann"], label="Grassmann"), *extra]


def _published_panels(published: list[Config]) -> list[tuple[str, str, tuple]]:
    """(task, quantity, setting) per panel: the paper's tables first, then reproduction-only settings."""
    panels = []
    for task in TASK_TITLES:
        for setting in _ordered_settings([c for c in published if c.key.task == task]):
            configs = [c for c in published if c.key.task == task and c.key.setting() == setting]
            panels += [(task, q, setting) for q in ("best_val", "test")
                       if any(c.stat(q).n for c in configs) and (q == "best_val" or task == "snli")]
    return sorted(panels, key=lambda p: p[2] not in PAPER_TABLES)


def plot_published(published: list[Config], out_dir: Path) -> list[Path]:
    """`published_numbers`: every published setting, paper and reproductions side by side."""
    panels = _published_panels(published)
    ncols = 4
    nrows = math.ceil((len(panels) + 1) / ncols)  # one cell more for the legend
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    for ax, (task, quantity, setting) in zip(axes.flat, panels):
        configs = [c for c in published if c.key.task == task and c.key.setting() == setting]
        _draw_panel(ax, task, quantity, configs)
        table = PAPER_TABLES.get(setting)
        ax.set_title(_setting_title(task, setting) + (f" (paper {table})" if table else " (reproductions only)"),
                     fontsize=9)
        ax.set_ylabel(QUANTITY_TITLES[(task, quantity)], fontsize=8)
    spare = list(axes.flat)[len(panels):]
    for ax in spare:
        ax.axis("off")
    spare[0].legend(handles=_model_legend(), loc="center", fontsize=9,
                    title="single reported runs\n(no seeds or error bars published)", title_fontsize=8)
    fig.suptitle("Published numbers: the paper's Tables 1-3 and the public reproductions "
                 "(results/reference/published.json)", fontsize=11)
    fig.tight_layout()
    return save(fig, out_dir, "published_numbers")


def plot_params(path: Path, out_dir: Path) -> list[Path]:
    """`param_breakdown`: stacked parameter counts per component from breakdown.json."""
    if not path.is_file():
        raise ResultsError(f"parameter breakdown not found: {path} (run scripts/param_breakdown.py)")
    rows = json.loads(path.read_text())["rows"]
    components = list(dict.fromkeys(name for r in rows for name in r["components"]))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(10, 5))
    labels = [f"{r['model'].capitalize()}LM\nN={r['n_layers']}, L={r['block_size']}" for r in rows]
    bottoms = [0.0] * len(rows)
    for k, name in enumerate(components):
        values = [r["components"].get(name, 0) / 1e6 for r in rows]
        ax.bar(range(len(rows)), values, 0.6, bottom=bottoms, label=name, color=cmap(k))
        for i, v in enumerate(values):
            if v >= 0.3:  # label the slices tall enough to hold text
                ax.text(i, bottoms[i] + v / 2, f"{v:.2f}M", ha="center", va="center", fontsize=7)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for i, r in enumerate(rows):
        ax.text(i, bottoms[i], f"{r['total']:,}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("parameters (millions)")
    ax.set_ylim(0, max(bottoms) * 1.08)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"Parameters per component, `paper` preset, {rows[0]['n_positions']}-row position table "
                 "(scripts/param_breakdown.py)", fontsize=10)
    fig.tight_layout()
    return save(fig, out_dir, "param_breakdown")


def _provenance(configs: list[Config]) -> str:
    """How our runs in a panel were made: corpus, epochs run and devices (from the runs)."""
    facts = run_facts([r for c in configs for r in c.included_runs])
    return (f"{'/'.join(facts['corpora'])} corpus, {'/'.join(map(str, facts['epochs']))} epochs, "
            f"{'/'.join(facts['devices'])}")


def plot_task_results(summary: TaskSummary, out_dir: Path) -> list[Path]:
    """`<task>_results`: our runs, best validation and test, one row per setting.

    Published numbers are drawn only beside full-corpus runs; panels of reduced-corpus
    runs hold our runs alone.
    """
    task = summary.task
    panels = [(name, s) for name in ("paper_comparison", "reduced_corpus")
              for s in _ordered_settings([c for c in summary.sections[name] if c.key.source == OURS])]
    if not panels:  # no run finished: nothing to draw
        return []
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.3 * len(panels) + 0.6), squeeze=False)
    for row, (name, setting) in enumerate(panels):
        configs = [c for c in summary.sections[name] if c.key.setting() == setting]
        ours = [c for c in configs if c.key.source == OURS]
        for col, quantity in enumerate(("best_val", "test")):
            ax = axes[row][col]
            _draw_panel(ax, task, quantity, configs)
            suffix = ("" if name == "paper_comparison"
                      else f"\n{_provenance(ours)}: NOT comparable with the paper")
            ax.set_title(_setting_title(task, setting) + suffix, fontsize=9)
            ax.set_ylabel(QUANTITY_TITLES[(task, quantity)], fontsize=8)
    handles = _model_legend([Patch(facecolor="white", edgecolor="black", label="ours (mean ± std over seeds)")])
    if summary.sections["paper_comparison"]:
        handles.append(Patch(facecolor="lightgrey", alpha=0.55, label="published (single runs)"))
    if summary.sections["reduced_corpus"]:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="ours on a reduced/custom corpus: not comparable with the paper"))
    fig.suptitle(f"{TASK_TITLES[task]}: our runs at the lr chosen on validation", fontsize=11)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.7 / (4.3 * len(panels) + 0.6), 1, 1))
    return save(fig, out_dir, f"{task}_results")


def _mean_band(runs: list, key: str, scale: float) -> tuple[list[int], list[float], list[float], list[float]]:
    """(epochs, mean, mean - std, mean + std) of a per-epoch quantity over runs."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for row in run.data.get("epochs", []):
            value = row.get(key)
            if value is not None and math.isfinite(value):
                by_epoch[row["epoch"]].append(value * scale)
    epochs = sorted(by_epoch)
    mean = [statistics.fmean(by_epoch[e]) for e in epochs]
    std = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, mean, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]


def _curve_label(config: Config) -> str:
    k = config.key
    return (f"{k.label} {k.preset or ''}" + (f"/{k.tag}" if k.tag else "") + (f" lr {k.lr:g}" if k.lr else "")
            + f" [{k.corpus}] (n={len(config.included_runs)})")


def plot_curves(summary: TaskSummary, out_dir: Path) -> list[Path]:
    """`<task>_curves`: per setting, train loss, validation loss/accuracy and a test panel."""
    task = summary.task
    ours = [c for c in summary.sections["paper_comparison"] + summary.sections["reduced_corpus"]
            if c.key.source == OURS and c.included_runs]
    settings = _ordered_settings(ours)
    if not settings:  # no run finished: nothing to draw
        return []
    val_key, val_scale, val_title = (("val_loss", 1.0, "validation loss") if task == "wikitext"
                                     else ("val_acc", 100.0, "validation accuracy (%)"))
    fig, axes = plt.subplots(len(settings), 3, figsize=(17, 4.2 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        panel = [c for c in ours if c.key.setting() == setting]
        variants = sorted({(c.key.label, c.key.preset or "", c.key.tag, c.key.corpus) for c in panel})
        for col, (key, scale, ylabel) in enumerate((("train_loss", 1.0, "training loss (epoch mean)"),
                                                    (val_key, val_scale, val_title))):
            ax = axes[row][col]
            for c in panel:
                k = c.key
                style = LINESTYLES[variants.index((k.label, k.preset or "", k.tag, k.corpus)) % len(LINESTYLES)]
                epochs, mean, low, high = _mean_band(c.included_runs, key, scale)
                ax.plot(epochs, mean, marker="o", markersize=3, color=COLORS[k.model], linestyle=style,
                        label=_curve_label(c))
                ax.fill_between(epochs, low, high, color=COLORS[k.model], alpha=0.2)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            ax.set_title(_setting_title(task, setting) + ("" if all(c.key.comparable for c in panel)
                                                          else f" ({_provenance(panel)})"),
                         fontsize=9)
            ax.legend(fontsize=7)
        _draw_panel(axes[row][2], task, "test", panel)
        axes[row][2].set_ylabel(QUANTITY_TITLES[(task, "test")], fontsize=8)
        axes[row][2].set_title("test at the best-validation checkpoint", fontsize=9)
    excluded = len(summary.excluded_runs)
    title = f"{TASK_TITLES[task]}: per-epoch curves, mean and ±1 std band over completed seeds"
    if excluded:
        title += f"\n({excluded} run(s) that did not complete are excluded)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, out_dir, f"{task}_curves")


def plot_speed_ratios(path: Path, out_dir: Path) -> list[Path]:
    """`speed_ratios`: (a) Grassmann mixer / attention time against L, (b) model step-time ratios."""
    doc = load_bench(path)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    mixer = mixer_ratios(doc)
    ax = axes[0]
    for layer in sorted({r["layer"] for r in mixer}):
        points = [(r["L"], r["ratio"]) for r in mixer if r["layer"] == layer]
        ax.plot(*zip(*points), marker="o", label=layer)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    if mixer:
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    ax.set_xlabel("sequence length L (B·L fixed)")
    ax.set_ylabel("time / attention time (fwd + bwd)")
    ax.set_title("(a) one mixing layer", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax = axes[1]
    model = model_ratios(doc)
    series = sorted({(r["model"], r["mode"]) for r in model})
    settings = sorted({(r["L"], r["N"], r["B"]) for r in model})
    width = 0.8 / max(1, len(series))
    for j, (name, mode) in enumerate(series):
        ratio = {(r["L"], r["N"], r["B"]): r["ratio"] for r in model if (r["model"], r["mode"]) == (name, mode)}
        xs = [i for i, s in enumerate(settings) if s in ratio]
        ax.bar([x - 0.4 + (j + 0.5) * width for x in xs], [ratio[settings[x]] for x in xs], width,
               label=f"{name} ({mode})")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    if series:
        ax.set_xticks(range(len(settings)), [f"L={L}, N={N}, B={B}" for L, N, B in settings], fontsize=8)
        ax.legend(fontsize=7)
    ax.set_ylabel("step time / Transformer step time")
    ax.set_title("(b) training step (fwd + bwd + AdamW)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    env = doc.get("env", {})
    fig.suptitle(f"Speed ratios: {env.get('gpu') or env.get('device', '?')}, {env.get('date', '?')} "
                 f"({path.name})", fontsize=11)
    fig.tight_layout()
    return save(fig, out_dir, "speed_ratios")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", help="runs to draw (default: every run under outputs/)")
    parser.add_argument("--bench", type=Path, help="benchmark JSON, or a directory of them read as one "
                        "(default: the newest GPU benchmark in results/bench/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "images",
                        help="figure directory (default: images/ in the repository)")
    parser.add_argument("--published", type=Path, default=PUBLISHED_JSON, help="published reference numbers")
    parser.add_argument("--params", type=Path, default=PARAMS_JSON, help="parameter breakdown JSON")
    args = parser.parse_args(argv)
    try:
        if args.output_dir is not None and not Path(args.output_dir).is_dir():
            raise ResultsError(f"output directory not found: {args.output_dir}")
        root = Path(args.output_dir) if args.output_dir else OUTPUTS_ROOT
        runs = load_runs(root) if args.output_dir else load_committed_runs(root)
        published = load_published(args.published)
        summaries = summarize(runs, published)
        written = plot_published(published, args.out) + plot_params(args.params, args.out)
        for summary in summaries.values():
            if summary.runs:
                written += plot_task_results(summary, args.out) + plot_curves(summary, args.out)
        bench = args.bench or next(iter(gpu_bench_files(BENCH_DIR)[-1:]), None)
        if bench is not None:
            if not bench.exists():
                raise ResultsError(f"benchmark file not found: {bench}")
            written += plot_speed_ratios(bench, args.out)
        else:
            print("no GPU benchmark JSON under results/bench/: skipping speed_ratios", file=sys.stderr)
    except (ResultsError, BenchFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
