"""The project's figures, drawn from runs' JSON, the published numbers and the benchmark JSON.

  published_numbers   the paper's Tables 1-3 beside the public reproductions, per setting
                      (SNLI as a table, one row per source and README revision)
  param_breakdown     parameters per component, both models, both paper settings
  <task>_results      our best validation and test numbers per configuration (mean ± std
                      over seeds, at the lr chosen on validation; a bar from one seed says
                      "1 seed"); runs on a reduced corpus, of another size, or QUICK, are
                      hatched and never drawn beside published numbers
  <task>_curves       training loss and validation loss (SNLI: accuracy) per epoch, mean
                      and ±1 std band over completed seeds, and a test panel at the best checkpoint
  speed_ratios        Grassmann mixer / attention and Grassmann / Transformer step time
The alt text of each figure is `summary.FIGURES`; the blog references them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..bench.results import load_bench, mixer_ratios, model_ratios  # noqa: E402
from .load import OURS, REPO_ROOT, ResultsError, Run, run_facts  # noqa: E402
from .summary import OUR_SECTIONS, SNLI_MODE_TITLES, TASK_TITLES, Config, TaskSummary, pair_configs  # noqa: E402

COLORS = {"transformer": "#4C72B0", "grassmann": "#DD8452"}
LINESTYLES = ("-", "--", ":", "-.")
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
        mode = SNLI_MODE_TITLES.get(setting[0])
        title = f"SNLI, {mode}" if mode else f"SNLI mode: {setting[0] or 'unspecified'}"
    return title


def _ordered_settings(configs: list[Config]) -> list[tuple]:
    """Distinct settings, those with runs of ours first, then by (L, N) or SNLI mode."""
    ours = {c.key.setting() for c in configs if c.key.source == OURS}
    return sorted({c.key.setting() for c in configs},
                  key=lambda s: (s not in ours, [(v is None, v if v is not None else 0) for v in s]))


def _group_label(group: dict[str, Config]) -> str:
    """x tick label of a bar pair, one fact a line: who (published: source and variant; ours:
    the pairing), then for ours the preset, tag and lrs (the corpus is in the panel title)."""
    g, t = group.get("grassmann"), group.get("transformer")
    k = next(iter(group.values())).key
    if k.source != OURS:  # "alphaXiv (README v1)" -> two lines
        return next(iter(group.values())).source_label.replace(" (", "\n(") + (f"\n{k.tag}" if k.tag else "")
    lines = [c.key.label for c in (g, t) if c]
    if len(lines) == 2:
        lines[1] = f"vs {lines[1]}"
    tags = "/".join(dict.fromkeys(c.key.tag or "—" for c in (g, t) if c))
    lrs = "/".join(f"{c.key.lr:g}" for c in (g, t) if c and c.key.lr)
    lines += ([f"preset {k.preset}"] if k.preset else []) + ([f"tag {tags}"] if tags != "—" else [])
    return "\n".join(lines + ([f"lr {lrs}"] if lrs else []))


def _panel_width(configs: list[Config]) -> float:
    """Inches a bar panel of `configs` needs so that its tick labels do not overlap."""
    return max(5.0, 1.0 + 1.45 * len(_bar_groups(configs)))


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
                text += "\n1 seed" if stat.n == 1 else f"\nn={stat.n}"
            ax.annotate(text, (x, height + (stat.std or 0) * scale), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    labels = [_group_label(g) for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=7)
    ax.set_xlim(-0.7, max(len(groups), 2) - 0.3)  # keep bar widths alike across panels
    ax.set_ylim(0, cap * 1.22)
    ax.grid(axis="y", alpha=0.3)


def _model_legend(extra: list[Patch] = ()) -> list[Patch]:
    return [Patch(color=COLORS["transformer"], label="Transformer"),
            Patch(color=COLORS["grassmann"], label="Grassmann"), *extra]


def _snli_table_rows(published: list[Config]) -> list[list[str]]:
    """One row per SNLI source and variant (a README revision, a paper table):
    source, variant, mode, then validation and test accuracy of each model ("—" where not reported)."""
    rows: dict[tuple, dict[str, Config]] = {}
    for c in published:
        if c.key.task == "snli":
            rows.setdefault((c.source_label, c.key.tag, c.key.snli_mode or "—"), {})[c.key.model] = c

    def cell(config: Config | None, quantity: str) -> str:
        stat = config.stat(quantity) if config else None
        return f"{100 * stat.mean:.2f}%" if stat and stat.n else "—"

    return [[source, variant or "—", mode] + [cell(models.get(m), q) for m in ("transformer", "grassmann")
                                               for q in ("best_val", "test")]
            for (source, variant, mode), models in sorted(rows.items(), key=lambda r: (r[0][2], r[0][0] != "Paper"))]


def plot_published(published: list[Config], out_dir: Path) -> list[Path]:
    """`published_numbers`: WikiText-2 best validation PPL per setting (bars, one pair per
    source and variant), the paper's tables first; SNLI as a table, one row per source and
    variant, since its rows mix DistilBERT heads, from-scratch models and README revisions."""
    wiki = [c for c in published if c.key.task == "wikitext"]
    settings = sorted(_ordered_settings(wiki), key=lambda s: s not in PAPER_TABLES)
    snli = _snli_table_rows(published)
    width = max(_panel_width([c for c in wiki if c.key.setting() == s]) for s in settings)
    wiki_rows = math.ceil(len(settings) / 2)
    table_h = 0.9 + 0.28 * len(snli)
    fig = plt.figure(figsize=(2 * width, 4.2 * wiki_rows + table_h + 0.8))
    grid = fig.add_gridspec(wiki_rows + 1, 2, height_ratios=[4.2] * wiki_rows + [table_h])
    for i, setting in enumerate(settings):
        ax = fig.add_subplot(grid[i // 2, i % 2])
        _draw_panel(ax, "wikitext", "best_val", [c for c in wiki if c.key.setting() == setting])
        table = PAPER_TABLES.get(setting)
        ax.set_title(f"WikiText-2, {_setting_title('wikitext', setting)}"
                     + (f" (paper {table})" if table else " (reproductions only)"), fontsize=9)
        ax.set_ylabel(QUANTITY_TITLES[("wikitext", "best_val")], fontsize=8)
        if i == 0:
            ax.legend(handles=_model_legend(), fontsize=8, loc="upper left",
                      title="single reported runs (no seeds or error bars)", title_fontsize=7)
    ax = fig.add_subplot(grid[wiki_rows, :])
    ax.axis("off")
    if snli:
        header = ["source", "variant", "SNLI mode", "Transformer val", "Transformer test",
                  "Grassmann val", "Grassmann test"]
        cells = ax.table(cellText=snli, colLabels=header, loc="upper center", cellLoc="center")
        cells.auto_set_font_size(False)
        cells.set_fontsize(8)
        cells.auto_set_column_width(list(range(len(header))))
        ax.set_title("SNLI accuracy (single reported runs; the paper's Table 3 uses DistilBERT heads)", fontsize=9)
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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _provenance(configs: list[Config]) -> str:
    """How our runs in a panel were made: corpus, epochs run and devices (from the runs)."""
    facts = run_facts([r for c in configs for r in c.included_runs])
    epochs = "/".join(map(str, facts["epochs"])) + (" epoch" if facts["epochs"] == [1] else " epochs")
    return f"{'/'.join(facts['corpora'])} corpus, {epochs}, {'/'.join(facts['devices'])}"


# What a panel of each section says about its runs (the paper comparison needs no caveat).
SECTION_CAVEATS = {
    "reduced_corpus": "NOT comparable with the paper",
    "other_width": "another model size: NOT comparable with the paper",
    "quick": "QUICK smoke runs: NOT results",
}


def _our_panels(summary: TaskSummary) -> list[tuple[str, tuple, list[Config]]]:
    """(section, setting, configs) of every panel of our runs: one per section and setting."""
    panels = []
    for name in OUR_SECTIONS:
        configs = summary.sections[name]
        for setting in _ordered_settings([c for c in configs if c.key.source == OURS]):
            panels.append((name, setting, [c for c in configs if c.key.setting() == setting]))
    return panels


def _panel_title(task: str, name: str, setting: tuple, configs: list[Config]) -> str:
    """Setting, and for runs not comparable with the paper how they were made and why not."""
    title = _setting_title(task, setting)
    if name == "paper_comparison":
        return title
    ours = [c for c in configs if c.key.source == OURS]
    return f"{title}\n{_provenance(ours)}: {SECTION_CAVEATS[name]}"


def plot_task_results(summary: TaskSummary, out_dir: Path) -> list[Path]:
    """`<task>_results`: our runs, best validation and test, one row per section and setting.

    Published numbers are drawn only beside full-corpus runs at the paper's size; other
    panels hold our runs alone.
    """
    task = summary.task
    panels = [p for p in _our_panels(summary) if any(c.included_runs for c in p[2])]
    if not panels:  # no run finished: nothing to draw
        return []
    width = max(_panel_width(configs) for _, _, configs in panels)
    fig, axes = plt.subplots(len(panels), 2, figsize=(2 * width, 4.6 * len(panels) + 0.8), squeeze=False)
    for row, (name, setting, configs) in enumerate(panels):
        for col, quantity in enumerate(("best_val", "test")):
            ax = axes[row][col]
            _draw_panel(ax, task, quantity, configs)
            ax.set_title(_panel_title(task, name, setting, configs), fontsize=9)
            ax.set_ylabel(QUANTITY_TITLES[(task, quantity)], fontsize=8)
    handles = _model_legend([Patch(facecolor="white", edgecolor="black",
                                   label="ours: mean ± std over seeds (n = seeds)")])
    if any(c.key.source != OURS for c in summary.sections["paper_comparison"]):
        handles.append(Patch(facecolor="lightgrey", alpha=0.55, label="published (single runs)"))
    if any(name != "paper_comparison" for name, _, _ in panels):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="ours, not comparable with the paper (see panel title)"))
    fig.suptitle(f"{TASK_TITLES[task]}: our runs at the lr chosen on validation", fontsize=11)
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.9 / (4.6 * len(panels) + 0.8), 1, 1))
    return save(fig, out_dir, f"{task}_results")


def _mean_band(runs: list[Run], key: str, scale: float) -> pd.DataFrame:
    """Per epoch (index), the mean, mean - std and mean + std of a per-epoch quantity over
    runs (std = 0 where one run has the epoch), and n, the runs that have it."""
    rows = [{"epoch": row["epoch"], "value": row.get(key)} for run in runs for row in run.data.get("epochs") or []]
    values = pd.DataFrame(rows, columns=["epoch", "value"]).astype({"value": float})
    values = values[values["value"].map(math.isfinite)]  # a diverged epoch's NaN is no point
    band = (values["value"] * scale).groupby(values["epoch"]).agg(["mean", "std", "count"])
    std = band["std"].fillna(0.0)
    return pd.DataFrame({"mean": band["mean"], "low": band["mean"] - std, "high": band["mean"] + std,
                         "n": band["count"]})


def _curve_label(config: Config) -> str:
    k = config.key
    return (f"{k.label} {k.preset or ''}" + (f"/{k.tag}" if k.tag else "") + (f" lr {k.lr:g}" if k.lr else "")
            + f" [{k.corpus}] ({_plural(len(config.included_runs), 'seed')})")


def plot_curves(summary: TaskSummary, out_dir: Path) -> list[Path]:
    """`<task>_curves`: per section and setting, train loss, validation loss/accuracy and a
    test panel; each line is the mean over completed seeds with a ±1 std band."""
    task = summary.task
    panels = [(name, setting, [c for c in configs if c.key.source == OURS and c.included_runs])
              for name, setting, configs in _our_panels(summary)]
    panels = [p for p in panels if p[2]]
    if not panels:  # no run finished: nothing to draw
        return []
    val_key, val_scale, val_title = (("val_loss", 1.0, "validation loss") if task == "wikitext"
                                     else ("val_acc", 100.0, "validation accuracy (%)"))
    width = max(_panel_width(configs) for _, _, configs in panels)
    fig, axes = plt.subplots(len(panels), 3, figsize=(12 + width, 4.8 * len(panels)), squeeze=False,
                             gridspec_kw={"width_ratios": (6, 6, width)})
    for row, (name, setting, panel) in enumerate(panels):
        variants = sorted({(c.key.label, c.key.preset or "", c.key.tag) for c in panel})
        for col, (key, scale, ylabel) in enumerate((("train_loss", 1.0, "training loss (epoch mean)"),
                                                    (val_key, val_scale, val_title))):
            ax = axes[row][col]
            for c in panel:
                k = c.key
                style = LINESTYLES[variants.index((k.label, k.preset or "", k.tag)) % len(LINESTYLES)]
                band = _mean_band(c.included_runs, key, scale)
                ax.plot(band.index, band["mean"], marker="o", markersize=3, color=COLORS[k.model],
                        linestyle=style, label=_curve_label(c))
                ax.fill_between(band.index, band["low"], band["high"], color=COLORS[k.model], alpha=0.2)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            ax.set_title(_panel_title(task, name, setting, panel), fontsize=9)
            ax.legend(fontsize=7)
        _draw_panel(axes[row][2], task, "test", panel)
        axes[row][2].set_ylabel(QUANTITY_TITLES[(task, "test")], fontsize=8)
        axes[row][2].set_title("test at the best-validation checkpoint", fontsize=9)
    excluded = len(summary.excluded_runs)
    title = f"{TASK_TITLES[task]}: per-epoch curves, mean over completed seeds with a ±1 std band (none with 1 seed)"
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
