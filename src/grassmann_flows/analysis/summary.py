"""Configurations, the choice of learning rate, Grassmann-vs-Transformer gaps, report sections.

Our runs and the published rows of `results/reference/published.json` are turned into the
same `Config` objects, so the tables, the summary JSON and the figures all go through one
code path.

Statistics
----------
* Per configuration: mean and *sample* standard deviation (ddof = 1) over the seeds of
  runs whose status is "completed"; runs with any other status ("diverged",
  "interrupted") are listed but kept out of every mean.
* Gap, WikiText-2: ratio of Grassmann to Transformer perplexity. The interval is Welch's
  t interval for the difference of the mean log-perplexities (log PPL = validation loss),
  exponentiated; the point estimate is therefore the ratio of geometric-mean PPLs.
* Gap, SNLI: Grassmann minus Transformer accuracy, Welch's t interval on the difference.
* With fewer than two seeds on either side there is no interval ("n/a (1 seed)").
* The Student-t numerics and Welch's interval live in `stats.py`.

Bookkeeping
-----------
* Learning rate: `select_lr` picks, per model configuration, the lr with the best
  *validation* mean, compared on the seeds that every candidate lr has (a sweep that tries
  several lrs at seed 0 and then adds seeds only at the winner would otherwise compare
  one seed with several); with no seed in common, on all seeds. Test numbers are reported
  at that lr, from all of that lr's seeds. Test never takes part in the choice.
* Controls: `pair_configs` reports G-paper vs T-preLN, G-paper vs T-postLN and
  G-no-extra vs T, from the configuration fields (`block`, `extra_proj`).
* Sections: full-corpus runs at the paper's size beside the published numbers; runs on a
  reduced corpus, runs of another model size and QUICK smoke runs each in a section of
  their own, never beside the paper and never paired across sections.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .load import (
    COMPARABLE_CORPUS, PUBLISHED_JSON, TASKS, ConfigKey, ResultsError, Run, dedupe_runs, display_path,
    order_key, run_facts,
)
from .stats import Stat, make_stat, welch_interval


@dataclass
class Config:
    """One configuration: our seeds of it, or one published row (a single value)."""

    key: ConfigKey
    runs: list[Run] = field(default_factory=list)
    source_label: str = "ours"
    params_m: float | None = None
    published: dict[str, Any] | None = None  # the published.json row, for published configs
    # (lr, validation Stat) of every lr tried for this model configuration, when chosen by select_lr,
    # each over `lr_seeds` (the seeds every candidate has; None: no seed in common, all seeds)
    lr_candidates: list[tuple[float | None, Stat]] = field(default_factory=list)
    lr_seeds: list | None = None

    @property
    def included_runs(self) -> list[Run]:
        return [r for r in self.runs if r.included]

    def stat(self, quantity: str) -> Stat:
        """Over-seed statistics of "best_val", "test", "best_epoch", "tokens_per_s",
        "train_time_s" (training wall-clock, evaluation excluded) or "epochs_run"."""
        if self.published is not None:
            return make_stat([self.published.get(quantity)])
        getters = {
            "best_val": lambda r: r.best_val,
            "test": lambda r: r.test,
            "best_epoch": lambda r: r.data.get("best_epoch"),
            "tokens_per_s": lambda r: r.data.get("tokens_per_s"),
            "train_time_s": lambda r: r.data.get("train_time_s"),
            "epochs_run": lambda r: len(r.data.get("epochs") or []),
        }
        return make_stat(getters[quantity](r) for r in self.included_runs)

    @property
    def devices(self) -> str:
        """The devices the included runs trained on ("cpu", "cuda", ...), or "" for published rows."""
        return "/".join(run_facts(self.included_runs)["devices"])

    @property
    def n_seeds(self) -> int | None:
        """Completed seeds behind the means; None for published rows (seed counts unknown)."""
        return None if self.published is not None else len(self.included_runs)

    def to_json(self) -> dict[str, Any]:
        k = self.key
        out: dict[str, Any] = {
            "source": k.source, "source_label": self.source_label, "task": k.task,
            "model": k.model, "label": k.label, "seq_len": k.seq_len, "n_layers": k.n_layers,
            "preset": k.preset, "tag": k.tag, "corpus": k.corpus, "snli_mode": k.snli_mode,
            "block": k.block, "extra_proj": k.extra_proj, "lr": k.lr,
            "comparable_with_paper": k.comparable, "params_m": self.params_m,
            "n_seeds": self.n_seeds,
            "seeds": [r.seed for r in self.included_runs], "width": k.width, "quick": k.quick,
            "test_sources": sorted({r.test_source for r in self.included_runs}),
            "run_names": [r.name for r in self.included_runs],
        }
        out["devices"] = self.devices
        for quantity in ("best_val", "test", "best_epoch", "tokens_per_s", "train_time_s", "epochs_run"):
            out[quantity] = self.stat(quantity).to_json()
        if self.lr_candidates:
            out["lr_selection"] = [{"lr": lr, "best_val": stat.to_json()} for lr, stat in self.lr_candidates]
            out["lr_selection_seeds"] = self.lr_seeds
        if self.published is not None:
            out["citation"] = self.published["citation"]
            out["notes"] = self.published.get("notes", "")
        return out


def group_runs(runs: list[Run]) -> list[Config]:
    """Our runs grouped into configurations (all seeds and statuses kept)."""
    groups: dict[ConfigKey, Config] = {}
    for run in runs:
        config = groups.setdefault(run.key, Config(run.key))
        config.runs.append(run)
    for config in groups.values():
        config.runs.sort(key=lambda r: (order_key(r.seed), r.name))
        params = {r.data["params"] for r in config.runs if r.data.get("params")}
        # Seeds of one configuration build the same model; several counts would mean the
        # grouping key misses a setting, which the table then shows as the largest count.
        config.params_m = max(params) / 1e6 if params else None
    return sorted(groups.values(), key=lambda c: order_key(tuple(vars(c.key).values())))


def _validation_table(group: list[Config]) -> pd.DataFrame:
    """Best validation of the completed runs of `group`: one row per seed, one column per
    configuration of `group` (by position: its lr may be None)."""
    # Runs without a seed (very old schemas) share the row "none", which no other seed equals
    # (pandas would turn a None seed into NaN and drop its row).
    rows = [{"seed": "none" if r.seed is None else r.seed, "candidate": i, "best_val": r.best_val}
            for i, c in enumerate(group) for r in c.included_runs
            if r.best_val is not None and math.isfinite(r.best_val)]
    table = pd.DataFrame(rows, columns=["seed", "candidate", "best_val"]).astype({"seed": object})
    return table.pivot_table(index="seed", columns="candidate", values="best_val", sort=False)


def select_lr(configs: list[Config]) -> list[Config]:
    """Per model configuration, the lr whose mean best validation is best, on common seeds.

    The lrs are compared on the seeds that every lr with a validation value has (all seeds
    when they share none), recorded in `lr_seeds`. Lower PPL wins on WikiText-2, higher
    accuracy on SNLI. Only validation is looked at; the test numbers reported are those of
    all the chosen lr's seeds. A configuration with no validation value at any lr keeps
    its first lr (it shows as "—" anyway).
    """
    by_model: dict[ConfigKey, list[Config]] = {}
    for config in configs:
        by_model.setdefault(config.key.without_lr(), []).append(config)
    chosen = []
    for group in by_model.values():
        group.sort(key=lambda c: order_key(c.key.lr))
        table = _validation_table(group)
        common = table.dropna()
        compared = common if len(common) else table
        means = compared.mean()  # per candidate, over the compared seeds
        if means.empty:
            best = group[0]
        else:
            best = group[means.idxmax() if group[0].key.task == "snli" else means.idxmin()]
        if len(group) > 1:
            seeds = (None if seed == "none" else seed for seed in common.index)
            best.lr_seeds = sorted(seeds, key=order_key) if len(common) else None
            best.lr_candidates = [(c.key.lr, make_stat(compared[i] if i in compared else []))
                                  for i, c in enumerate(group)]
        chosen.append(best)
    return sorted(chosen, key=lambda c: order_key(tuple(vars(c.key).values())))


def load_published(path: Path = PUBLISHED_JSON) -> list[Config]:
    """The published rows of `published.json` as single-value configurations."""
    if not path.is_file():
        raise ResultsError(f"published reference file not found: {path}")
    doc = json.loads(path.read_text())
    sources = doc["sources"]
    configs = []
    for row in doc["rows"]:
        source = sources[row["source"]]
        key = ConfigKey(
            source=row["source"], task=row["task"], model=row["model"],
            seq_len=row.get("seq_len"), n_layers=row.get("n_layers"),
            preset=row.get("preset_equivalent"), tag=row.get("variant", ""),
            corpus=COMPARABLE_CORPUS,  # every published number here is on the official splits
            snli_mode=row.get("snli_mode"),
        )
        flat = dict(row["metrics"], best_epoch=row.get("best_epoch"),
                    citation=source["citation"], notes=row.get("notes", ""))
        # Map the published metric names onto the quantities our runs report.
        metric = "ppl" if row["task"] == "wikitext" else "acc"
        flat["best_val"] = row["metrics"].get(f"best_val_{metric}")
        flat["test"] = row["metrics"].get(f"test_{metric}")
        configs.append(Config(key, source_label=source["label"],
                              params_m=row.get("params_m"), published=flat))
    return configs


# --------------------------------------------------------------------------- gaps


@dataclass
class Gap:
    """Grassmann vs Transformer for one pair of configurations."""

    grassmann: Config
    transformer: Config

    @property
    def pairing(self) -> str:
        """E.g. "G-paper vs T-preLN"."""
        return f"{self.grassmann.key.label} vs {self.transformer.key.label}"

    def measure(self, quantity: str) -> dict[str, Any] | None:
        """Gap in `quantity` ("best_val" or "test") with its 95% CI, or None without data.

        WikiText-2: PPL ratio G/T (Welch on log PPL, exponentiated); SNLI: accuracy
        difference G - T (Welch on accuracy).
        """
        g, t = self.grassmann.stat(quantity), self.transformer.stat(quantity)
        if g.n == 0 or t.n == 0:
            return None
        ratio = self.grassmann.key.task == "wikitext"
        if ratio:  # the interval is built on log PPL = loss, then mapped back
            g, t = make_stat(math.log(v) for v in g.values), make_stat(math.log(v) for v in t.values)
        out: dict[str, Any] = {
            "kind": "ratio" if ratio else "difference",
            "n_grassmann": self.grassmann.n_seeds, "n_transformer": self.transformer.n_seeds,
            "ci95": None, "df": None, "note": "",
        }
        back = math.exp if ratio else (lambda x: x)
        if self.grassmann.published is not None:
            out["estimate"] = back(g.mean - t.mean)
            out["note"] = "n/a (published single values)"
        elif g.n < 2 or t.n < 2:
            out["estimate"] = back(g.mean - t.mean)
            out["note"] = "n/a (1 seed)"
        else:
            interval = welch_interval(g, t)
            out["estimate"] = back(interval.difference)
            out["ci95"] = [back(interval.low), back(interval.high)]
            out["df"] = interval.df
        return out

    def to_json(self) -> dict[str, Any]:
        k, t = self.grassmann.key, self.transformer.key
        return {
            "source": k.source, "source_label": self.grassmann.source_label, "task": k.task,
            "pairing": self.pairing, "seq_len": k.seq_len, "n_layers": k.n_layers,
            "preset": k.preset, "corpus": k.corpus, "snli_mode": k.snli_mode,
            "grassmann_tag": k.tag, "transformer_tag": t.tag,
            "grassmann_lr": k.lr, "transformer_lr": t.lr,
            "transformer_block": t.block, "grassmann_extra_proj": k.extra_proj,
            "best_val": self.measure("best_val"), "test": self.measure("test"),
        }


def _partners(g: ConfigKey, transformers: list[Config]) -> list[Config]:
    """The Transformer configurations a Grassmann configuration is compared with.

    * Always the pre-LN baseline (or, for published rows and DistilBERT heads, the one
      Transformer of the source), with the Grassmann tag or untagged: an ablation tag such
      as "nonorm" changes only the Grassmann model.
    * An untagged Grassmann with an extra d x d projection (the `paper` preset's main
      run) also against a post-LN Transformer (block=postln), whatever the control's
      tag: the block-layout control. Tagged ablations are compared with the baseline only.
    * The Transformer is trained once per configuration, under the first preset that gives
      it: one with the same preset is preferred, then one trained with the same shared
      settings (`ConfigKey.shared`: dropout, FFN dropout, init), then one keyed without a
      preset. A Transformer that differs in those settings is never a partner.
    """
    same_base = [t for t in transformers if t.key.pair_base() == g.pair_base()]
    pool = ([t for t in same_base if t.key.preset == g.preset]
            or [t for t in same_base if g.shared is not None and t.key.shared == g.shared]
            or [t for t in same_base if not t.key.preset])
    baseline = [t for t in pool if t.key.block in (None, "preln")]
    matched = ([t for t in baseline if t.key.tag == g.tag]
               or [t for t in baseline if t.key.tag == ""])
    main_run = g.tag == "" and g.extra_proj not in (None, "none")
    controls = [t for t in pool if t.key.block == "postln"] if main_run else []
    return matched + controls


def pair_configs(configs: list[Config]) -> list[Gap]:
    """Every Grassmann configuration against its Transformer partners (see `_partners`)."""
    transformers = [c for c in configs if c.key.model == "transformer"]
    return [Gap(g, t) for g in configs if g.key.model == "grassmann"
            for t in _partners(g.key, transformers)]


# --------------------------------------------------------------------------- summary


TASK_TITLES = {"wikitext": "WikiText-2", "snli": "SNLI"}
SNLI_MODE_TITLES = {"distilbert": "DistilBERT heads", "scratch": "from scratch"}
SECTION_TITLES = {
    "paper_comparison": "Paper comparison (full corpus)",
    "reduced_corpus": "Reduced-corpus results (not comparable with the paper)",
    "other_width": "Another model size than the paper's (full corpus; not comparable with the paper)",
    "quick": "QUICK smoke runs (a check that every code path runs; not results)",
    "published_reference": "Published results (reference only)",
}
# The sections that hold our runs, in report order (see `ConfigKey.section`).
OUR_SECTIONS = ("paper_comparison", "reduced_corpus", "other_width", "quick")


@dataclass
class TaskSummary:
    """Everything reported for one task, split into the sections of the report.

    `runs` are the runs counted (one per configuration and seed), `dropped` the duplicate
    copies left out, and `candidates` every configuration of ours at every lr before the
    choice of `select_lr` (the sections hold the chosen lr only).
    """

    task: str
    runs: list[Run]
    sections: dict[str, list[Config]]
    dropped: list[tuple[Run, Run]] = field(default_factory=list)
    candidates: list[Config] = field(default_factory=list)

    @property
    def excluded_runs(self) -> list[Run]:
        return [r for r in self.runs if not r.included]

    def gaps(self, section: str) -> list[Gap]:
        return pair_configs(self.sections[section])

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": METRIC_DESCRIPTIONS[self.task],
            "n_runs": len(self.runs),
            "excluded_runs": [{"run_name": r.name, "status": r.status, "path": display_path(r.path.parent)}
                              for r in self.excluded_runs],
            "dropped_duplicates": [{"dropped": display_path(d.path.parent), "kept": display_path(k.path.parent)}
                                   for d, k in self.dropped],
            "sections": {
                name: {"title": SECTION_TITLES[name],
                       "configs": [c.to_json() for c in configs],
                       "gaps": [g.to_json() for g in self.gaps(name)]}
                for name, configs in self.sections.items()
            },
        }


METRIC_DESCRIPTIONS = {
    "wikitext": {
        "best_val": "best validation perplexity over epochs (lower is better)",
        "test": "test perplexity of the best-validation checkpoint, at the lr chosen on validation",
        "gap": "Grassmann/Transformer PPL ratio: exp(mean log PPL_G - mean log PPL_T), "
               "Welch 95% CI on the log scale",
    },
    "snli": {
        "best_val": "best validation accuracy over epochs (higher is better)",
        "test": "test accuracy of the best-validation checkpoint, at the lr chosen on validation",
        "gap": "Grassmann - Transformer accuracy, Welch 95% CI",
    },
}


def summarize_task(task: str, runs: list[Run], published: list[Config]) -> TaskSummary:
    """Split one task's configurations into the report's sections.

    Duplicates are dropped first and the lr is chosen on validation. Each of our
    configurations goes to its `ConfigKey.section`; the published rows at the setting of a
    "paper_comparison" configuration go beside it, the others into "published_reference",
    shown on their own, for reference only.
    """
    task_runs, dropped = dedupe_runs([r for r in runs if r.task == task])
    candidates = group_runs(task_runs)
    ours = select_lr(candidates)
    published = [c for c in published if c.key.task == task]
    sections = {name: [c for c in ours if c.key.section == name] for name in OUR_SECTIONS}
    settings = {c.key.setting() for c in sections["paper_comparison"]}
    sections["paper_comparison"] += [c for c in published if c.key.setting() in settings]
    sections["published_reference"] = [c for c in published if c.key.setting() not in settings]
    return TaskSummary(task, task_runs, sections, dropped=dropped, candidates=candidates)


def summarize(runs: list[Run], published: list[Config]) -> dict[str, TaskSummary]:
    """One `TaskSummary` per task; each dropped duplicate is printed to stderr."""
    summaries = {task: summarize_task(task, runs, published) for task in TASKS}
    quick = sum(r.quick for s in summaries.values() for r in s.runs)
    if quick:
        print(f"{quick} QUICK smoke run(s): reported apart, never compared with other runs", file=sys.stderr)
    for summary in summaries.values():
        for run, kept in summary.dropped:
            print(f"dropped duplicate run {display_path(run.path.parent)} ({run.status}); "
                  f"kept {display_path(kept.path.parent)}", file=sys.stderr)
    return summaries


# The blog draws its result figures only from configurations with at least this many
# completed seeds: one seed shows no spread, and a figure invites reading one.
BLOG_MIN_SEEDS = 2


def blog_figure_runs(summaries: dict[str, TaskSummary]) -> list[Run]:
    """The runs of our configurations (all sections) with at least BLOG_MIN_SEEDS completed seeds."""
    return [r for s in summaries.values() for name in OUR_SECTIONS for c in s.sections.get(name, [])
            if (c.n_seeds or 0) >= BLOG_MIN_SEEDS for r in c.runs]


# Figures of `figures.py` (stem -> alt text), referenced from the blog.
FIGURES = {
    "published_numbers": "Published WikiText-2 best validation perplexities, the paper's Tables 1-2 "
                         "beside the public reproductions, one panel per setting; SNLI accuracies as a "
                         "table, one row per source and variant",
    "param_breakdown": "Parameter count per component of TransformerLM and GrassmannLM at the "
                       "paper's two settings (N=6, L=128 and N=12, L=256), stacked bars",
    "wikitext_results": "WikiText-2 best validation and test perplexity of our runs per "
                        "configuration, mean and std over seeds; reduced-corpus runs hatched and "
                        "shown without the paper's numbers",
    "snli_results": "SNLI best validation and test accuracy of our runs per configuration, "
                    "mean and std over seeds; reduced-corpus runs hatched",
    "wikitext_curves": "WikiText-2 training and validation loss per epoch, mean and one-std band "
                       "over seeds, and test perplexity at the best-validation checkpoint",
    "snli_curves": "SNLI training loss and validation accuracy per epoch, mean and one-std band "
                   "over seeds, and test accuracy at the best-validation checkpoint",
    "speed_ratios": "Step time of the Grassmann mixer and model over attention and the "
                    "Transformer, from the GPU benchmark JSON",
}
