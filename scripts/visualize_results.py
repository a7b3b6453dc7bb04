#!/usr/bin/env python
"""Plot a sweep's results beside the paper and the public reproductions.

Usage:
    python scripts/visualize_results.py [OUTPUT_DIR] [--bench results/bench/X.json] [--out images/]

Everything is regenerated from committed JSON: the runs' `results.json` (OUTPUT_DIR,
default the newest timestamped directory under `outputs/`), `results/reference/published.json`
and, for the speed plot, a benchmark JSON (default: the newest `results/bench/*.json`, if any).

Writes, as PNG and SVG, into --out (default `images/`):
  wikitext_results   best validation PPL per setting (L, N): ours (mean ± std over seeds,
                     hatched when the corpus is reduced/custom, i.e. not comparable with
                     the paper) next to the paper and the reproductions
  snli_results       the same for SNLI accuracy (best validation and test)
  <task>_val_curves  validation loss per epoch per configuration: mean over completed
                     seeds with the min-max band
  speed_scaling      from the benchmark JSON of scripts/benchmark.py (see `load_bench`):
                     mixer-layer time and memory against L, training throughput
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from _results import (  # noqa: E402
    OURS, PUBLISHED_JSON, REPO_ROOT, Config, ResultsError, TaskSummary, load_published,
    load_runs, resolve_output_dir, summarize,
)

COLORS = {"transformer": "#4C72B0", "grassmann": "#DD8452"}
LINESTYLES = ("-", "--", ":", "-.")
TASK_TITLES = {"wikitext": "WikiText-2", "snli": "SNLI"}
QUANTITY_TITLES = {
    ("wikitext", "best_val"): "best validation PPL (lower is better)",
    ("snli", "best_val"): "best validation accuracy (%)",
    ("snli", "test"): "test accuracy at the best-validation checkpoint (%)",
}
BENCH_DIR = REPO_ROOT / "results" / "bench"
# Stable SVG ids and no timestamps, so regenerating unchanged figures leaves git clean.
plt.rcParams["svg.hashsalt"] = "grassmann-flows"


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `fig` as PNG and SVG and close it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths


def _setting_title(task: str, setting: tuple) -> str:
    if task == "wikitext":
        return f"L={setting[0]}, N={setting[1]}"
    return f"SNLI mode: {setting[0] or 'unspecified'}"


def _ordered_settings(configs: list[Config]) -> list[tuple]:
    """Distinct settings, those with runs of ours first, then by (L, N) or SNLI mode."""
    ours = {c.key.setting() for c in configs if c.key.source == OURS}
    return sorted({c.key.setting() for c in configs},
                  key=lambda s: (s not in ours, [(v is None, v if v is not None else 0) for v in s]))


def _group_label(config: Config) -> str:
    """x tick label of a bar pair: who, which preset/variant, and (ours) which corpus."""
    k = config.key
    if k.source == OURS:
        label = f"ours: {k.preset or '?'}" + (f" / {k.tag}" if k.tag else "")
        return label + ("" if k.comparable else f"\n[{k.corpus} corpus]")
    return config.source_label + (f"\n{k.tag}" if k.tag else "")


def _bar_groups(configs: list[Config]) -> dict[tuple, dict[str, Config]]:
    """Configurations of one panel keyed by everything but the model, in display order."""
    groups: dict[tuple, dict[str, Config]] = {}
    ordered = sorted(configs, key=lambda c: c.key.source != OURS)  # ours first, stable otherwise
    for c in ordered:
        k = c.key
        groups.setdefault((k.source, k.preset, k.tag, k.corpus), {})[k.model] = c
    return groups


def _draw_panel(ax: plt.Axes, task: str, quantity: str, configs: list[Config]) -> None:
    """Transformer and Grassmann bars per group; outliers are clipped and labelled."""
    scale = 1.0 if task == "wikitext" else 100.0  # accuracies are plotted in percent
    groups = [g for g in _bar_groups(configs).values() if any(c.stat(quantity).n for c in g.values())]
    if not groups:
        ax.set_visible(False)
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
    labels = [_group_label(next(iter(g.values()))) for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=7, rotation=25, ha="right")
    ax.set_xlim(-0.7, max(len(groups), 3) - 0.3)  # keep bar widths alike across panels
    ax.set_ylim(0, cap * 1.22)
    ax.grid(axis="y", alpha=0.3)


def plot_task_results(summary: TaskSummary, out_dir: Path) -> list[Path]:
    """`<task>_results`: one panel per setting (and per quantity for SNLI)."""
    task = summary.task
    configs = [c for section in summary.sections.values() for c in section]
    settings = _ordered_settings(configs)
    quantities = [q for (t, q) in QUANTITY_TITLES if t == task]
    if len(quantities) > 1:  # one row per quantity, settings side by side (SNLI has <= 2 modes)
        ncols, nrows = len(settings), len(quantities)
    else:
        ncols = min(2, len(settings))
        nrows = math.ceil(len(settings) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.6 * nrows), squeeze=False)
    panels = [(q, s) for q in quantities for s in settings]
    for ax, (quantity, setting) in zip(axes.flat, panels):
        _draw_panel(ax, task, quantity, [c for c in configs if c.key.setting() == setting])
        ax.set_title(_setting_title(task, setting), fontsize=9)
        ax.set_ylabel(QUANTITY_TITLES[(task, quantity)], fontsize=8)
    spare = list(axes.flat)[len(panels):]
    for ax in spare:
        ax.axis("off")
    handles = [Patch(color=COLORS["transformer"], label="Transformer"),
               Patch(color=COLORS["grassmann"], label="Grassmann"),
               Patch(facecolor="white", edgecolor="black", label="ours (mean ± std over seeds)"),
               Patch(facecolor="lightgrey", alpha=0.55, label="published (single runs)")]
    reduced = sorted({c.key.corpus for c in configs if c.key.source == OURS and not c.key.comparable})
    title = f"{TASK_TITLES[task]}: ours vs the paper vs public reproductions"
    if reduced:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label=f"ours on a {'/'.join(reduced)} corpus: NOT comparable with the paper"))
        title += f"\n(hatched: our runs on a {'/'.join(reduced)} corpus, not comparable with the paper)"
    fig.suptitle(title, fontsize=11)
    if spare:  # an empty grid cell holds the legend
        spare[0].legend(handles=handles, loc="center", fontsize=9)
        fig.tight_layout()
    else:
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0))
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, out_dir, f"{task}_results")


def plot_val_curves(summary: TaskSummary, out_dir: Path) -> list[Path]:
    """`<task>_val_curves`: validation loss per epoch, mean and min-max band over seeds."""
    task = summary.task
    ours = [c for c in summary.sections["paper_comparison"] + summary.sections["reduced_corpus"]
            if c.key.source == OURS and c.included_runs]
    settings = _ordered_settings(ours)
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        panel = [c for c in ours if c.key.setting() == setting]
        # Colour says the model; the line style tells apart presets/tags/corpora of a model.
        variants = sorted({(c.key.preset or "", c.key.tag, c.key.corpus) for c in panel})
        for c in panel:
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in c.included_runs:
                for row in run.data.get("epochs", []):
                    loss = row.get("val_loss")
                    if loss is not None and math.isfinite(loss):
                        by_epoch[row["epoch"]].append(loss)
            epochs = sorted(by_epoch)
            k = c.key
            label = (f"{k.model} {k.preset}" + (f"/{k.tag}" if k.tag else "")
                     + f" [{k.corpus}] (n={len(c.included_runs)})")
            style = LINESTYLES[variants.index((k.preset or "", k.tag, k.corpus)) % len(LINESTYLES)]
            line, = ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
                            marker="o", markersize=3, label=label, color=COLORS[k.model], linestyle=style)
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                            [max(by_epoch[e]) for e in epochs], color=line.get_color(), alpha=0.2)
        ax.set_title(_setting_title(task, setting), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    excluded = len(summary.excluded_runs)
    title = f"{TASK_TITLES[task]}: validation loss, mean and min-max over completed seeds"
    if excluded:
        title += f"\n({excluded} run(s) that did not complete are excluded)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, out_dir, f"{task}_val_curves")


def load_bench(path: Path) -> dict[str, Any]:
    """A benchmark JSON as written by `scripts/benchmark.py`.

    Used keys: "env" ("device", "date"); "mixer": rows of one mixing layer with "L",
    "layer" (attention / grassmann-<impl>), "ms" and "peak_mb" (null on CPU); "model":
    training-step rows with "L", "N", "B", "model", "mode" and "tokens_per_s". Rows that
    were skipped or failed carry no "ms" and are left out.
    """
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("mixer"), list) or not isinstance(doc.get("model"), list):
        raise ResultsError(f"{path}: expected the JSON of scripts/benchmark.py (keys env, mixer, model)")
    return doc


def plot_bench(path: Path, out_dir: Path) -> list[Path]:
    """`speed_scaling`: (a) mixer-layer time and peak memory against L, (b) training throughput."""
    doc = load_bench(path)
    mixer = [r for r in doc["mixer"] if r.get("ms") is not None]
    model = [r for r in doc["model"] if r.get("tokens_per_s") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for ax, key, ylabel in ((axes[0], "ms", "forward + backward (ms)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for layer in sorted({r["layer"] for r in mixer}):
            points = sorted((r["L"], r[key]) for r in mixer if r["layer"] == layer and r.get(key) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=layer)
        if ax.lines:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("(a) one mixing layer, B·L fixed", fontsize=9)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    settings = sorted({(r["L"], r["N"], r["B"]) for r in model})
    series = sorted({(r["model"], r["mode"]) for r in model})
    width = 0.8 / max(1, len(series))
    for j, (name, mode) in enumerate(series):
        by_setting = {(r["L"], r["N"], r["B"]): r["tokens_per_s"] for r in model
                      if (r["model"], r["mode"]) == (name, mode)}
        xs = [i for i, s in enumerate(settings) if s in by_setting]
        ax.bar([x - 0.4 + (j + 0.5) * width for x in xs], [by_setting[settings[x]] / 1e3 for x in xs],
               width, label=f"{name} ({mode})")
    if series:
        ax.set_xticks(range(len(settings)), [f"L={L}, N={N}, B={B}" for L, N, B in settings], fontsize=8)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("(b) training step (fwd + bwd + AdamW)", fontsize=9)
    ax.set_ylabel("training throughput (k tokens/s)")
    ax.grid(axis="y", alpha=0.3)
    env = doc.get("env", {})
    fig.suptitle(f"Speed and scaling: {env.get('device', '?')}, {env.get('date', '?')} ({path.name})", fontsize=11)
    fig.tight_layout()
    return save(fig, out_dir, "speed_scaling")


def newest_bench(bench_dir: Path = BENCH_DIR) -> Path | None:
    """The most recently modified benchmark JSON, if any (decode-only runs have no (a) or (b))."""
    files = sorted((p for p in bench_dir.glob("*.json") if not p.stem.endswith("-decode")),
                   key=lambda p: p.stat().st_mtime) if bench_dir.is_dir() else []
    return files[-1] if files else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", help="sweep directory (default: newest under outputs/)")
    parser.add_argument("--bench", type=Path, help="benchmark JSON (default: newest results/bench/*.json)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "images",
                        help="figure directory (default: images/ in the repository)")
    parser.add_argument("--published", type=Path, default=PUBLISHED_JSON, help="published reference numbers")
    args = parser.parse_args(argv)
    try:
        output_dir = resolve_output_dir(args.output_dir)
        summaries = summarize(load_runs(output_dir), load_published(args.published))
        bench = args.bench or newest_bench()
        written = []
        for summary in summaries.values():
            written += plot_task_results(summary, args.out)
            if summary.runs:
                written += plot_val_curves(summary, args.out)
        if bench is not None:
            if not bench.is_file():
                raise ResultsError(f"benchmark file not found: {bench}")
            written += plot_bench(bench, args.out)
        else:
            print("no benchmark JSON given or found under results/bench/: skipping speed_scaling",
                  file=sys.stderr)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
