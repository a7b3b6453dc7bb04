"""Shared code for `analyze_best_results.py` and `visualize_results.py`.

Loads the `results.json` files a training sweep writes, groups them into configurations
(one configuration = everything but the seed), computes per-configuration statistics over
seeds and the Grassmann-vs-Transformer gap with a 95% confidence interval, and merges in
the published numbers from `results/reference/published.json`.

Our runs and the published rows are turned into the same `Config` objects, so the tables,
the summary JSON and the plots all go through one code path.

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
* The Student-t quantile is computed here (regularised incomplete beta by continued
  fraction + bisection), because scipy is not a dependency of this project.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_JSON = REPO_ROOT / "results" / "reference" / "published.json"
OUTPUTS_ROOT = REPO_ROOT / "outputs"
TASKS = ("wikitext", "snli")
MODELS = ("transformer", "grassmann")
# Only the official splits may be set against the paper; anything else is "reduced".
COMPARABLE_CORPUS = "full"
OURS = "ours"
_TIMESTAMP_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


class ResultsError(RuntimeError):
    """A problem with the input that the scripts report as a one-line error."""


# --------------------------------------------------------------------------- t quantile


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz algorithm)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only on this side of the mean; use the
    # symmetry I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (real, > 0) degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Inverse of `student_t_cdf` in its first argument, by bisection (|error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of the finite values of one quantity over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def make_stat(values: Iterable[float | None]) -> Stat:
    """A `Stat` over the finite entries of `values` (None/NaN/inf are dropped)."""
    return Stat(tuple(float(v) for v in values if v is not None and math.isfinite(v)))


@dataclass(frozen=True)
class Interval:
    """Welch's t interval for mean(a) - mean(b)."""

    difference: float
    low: float
    high: float
    df: float


def welch_interval(a: Stat, b: Stat, level: float = 0.95) -> Interval:
    """Welch's t interval for mean(a) - mean(b); needs at least two values on each side."""
    if a.n < 2 or b.n < 2:
        raise ValueError("Welch's interval needs at least two values per group")
    diff = a.mean - b.mean
    var_a, var_b = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(var_a + var_b)
    if se == 0.0:  # identical values on both sides: the interval collapses to the point
        return Interval(diff, diff, diff, math.inf)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (a.n - 1) + var_b ** 2 / (b.n - 1))
    half = student_t_quantile(0.5 + level / 2.0, df) * se
    return Interval(diff, diff - half, diff + half, df)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One training run, i.e. one `results.json`."""

    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data.get("run_name") or self.path.parent.name

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def status(self) -> str:
        return self.data.get("status", "completed")

    @property
    def included(self) -> bool:
        """Whether the run counts towards means (only fully completed runs do)."""
        return self.status == "completed"

    @property
    def best_val(self) -> float | None:
        """The task's headline number: best validation PPL (wikitext) or accuracy (snli)."""
        return self.data.get("best_val_ppl" if self.task == "wikitext" else "best_val_acc")

    @property
    def test(self) -> float | None:
        """Test PPL / accuracy of the best-validation checkpoint, when it was evaluated."""
        test = self.data.get("test") or {}
        return test.get("ppl" if self.task == "wikitext" else "acc")

    @property
    def key(self) -> "ConfigKey":
        d = self.data
        return ConfigKey(
            source=OURS, task=d["task"], model=d["model"], seq_len=d.get("seq_len"),
            n_layers=d.get("n_layers"), preset=d.get("preset"), tag=d.get("tag") or "",
            corpus=d.get("corpus", "unknown"),
            snli_mode=d.get("snli_mode") if d["task"] == "snli" else None,
        )


def resolve_output_dir(arg: str | None, outputs_root: Path = OUTPUTS_ROOT) -> Path:
    """The directory to analyse: `arg`, or the newest sweep directory under `outputs/`.

    Sweep directories are named by timestamp (YYYY-MM-DD_HH-MM-SS), so the newest is the
    largest name; directories with other names are only used when no timestamped one
    exists, newest modification time first.
    """
    if arg is not None:
        path = Path(arg)
        if not path.is_dir():
            raise ResultsError(f"output directory not found: {path}")
        return path
    if not outputs_root.is_dir():
        raise ResultsError(f"no OUTPUT_DIR given and {outputs_root} does not exist")
    dirs = [p for p in outputs_root.iterdir() if p.is_dir()]
    stamped = sorted(p for p in dirs if _TIMESTAMP_DIR.match(p.name))
    if stamped:
        return stamped[-1]
    if dirs:
        return max(dirs, key=lambda p: p.stat().st_mtime)
    raise ResultsError(f"no OUTPUT_DIR given and {outputs_root} holds no run directories")


def load_runs(output_dir: Path) -> list[Run]:
    """Every `results.json` below `output_dir`, sorted by path."""
    if not output_dir.is_dir():
        raise ResultsError(f"output directory not found: {output_dir}")
    runs = []
    for path in sorted(output_dir.rglob("results.json")):
        try:
            data = json.loads(path.read_text())  # json accepts the NaN a diverged run may hold
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path}: not valid JSON ({err})") from err
        if data.get("task") not in TASKS or data.get("model") not in MODELS:
            raise ResultsError(f"{path}: task/model must be one of {TASKS}/{MODELS}")
        runs.append(Run(path, data))
    if not runs:
        raise ResultsError(f"no results.json found under {output_dir}")
    return runs


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True, order=True)
class ConfigKey:
    """Everything that identifies a configuration except the seed.

    For published rows `preset` is the harness preset the row corresponds to (or a short
    description when none does) and `tag` is the row's variant within its source.
    """

    source: str
    task: str
    model: str
    seq_len: int | None
    n_layers: int | None
    preset: str | None
    tag: str
    corpus: str
    snli_mode: str | None

    @property
    def comparable(self) -> bool:
        """Whether the numbers may be set against the paper (official splits only)."""
        return self.corpus == COMPARABLE_CORPUS

    def setting(self) -> tuple:
        """What a published row must share with our runs to be shown beside them."""
        return (self.seq_len, self.n_layers) if self.task == "wikitext" else (self.snli_mode,)

    def pair_key(self) -> tuple:
        """What a Grassmann and a Transformer configuration share when they are compared."""
        return (self.source, self.task, self.seq_len, self.n_layers, self.preset,
                self.corpus, self.snli_mode)


@dataclass
class Config:
    """One configuration: our seeds of it, or one published row (a single value)."""

    key: ConfigKey
    runs: list[Run] = field(default_factory=list)
    source_label: str = "ours"
    params_m: float | None = None
    published: dict[str, Any] | None = None  # the published.json row, for published configs

    @property
    def included_runs(self) -> list[Run]:
        return [r for r in self.runs if r.included]

    def stat(self, quantity: str) -> Stat:
        """Over-seed statistics of "best_val", "test", "best_epoch" or "tokens_per_s"."""
        if self.published is not None:
            return make_stat([self.published.get(quantity)])
        getters = {
            "best_val": lambda r: r.best_val,
            "test": lambda r: r.test,
            "best_epoch": lambda r: r.data.get("best_epoch"),
            "tokens_per_s": lambda r: r.data.get("tokens_per_s"),
        }
        return make_stat(getters[quantity](r) for r in self.included_runs)

    @property
    def n_seeds(self) -> int | None:
        """Completed seeds behind the means; None for published rows (seed counts unknown)."""
        return None if self.published is not None else len(self.included_runs)

    def to_json(self) -> dict[str, Any]:
        k = self.key
        out: dict[str, Any] = {
            "source": k.source, "source_label": self.source_label, "task": k.task,
            "model": k.model, "seq_len": k.seq_len, "n_layers": k.n_layers, "preset": k.preset,
            "tag": k.tag, "corpus": k.corpus, "snli_mode": k.snli_mode,
            "comparable_with_paper": k.comparable, "params_m": self.params_m,
            "n_seeds": self.n_seeds,
            "seeds": [r.data.get("seed") for r in self.included_runs],
            "run_names": [r.name for r in self.included_runs],
        }
        for quantity in ("best_val", "test", "best_epoch", "tokens_per_s"):
            out[quantity] = self.stat(quantity).to_json()
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
        config.runs.sort(key=lambda r: (r.data.get("seed") is None, r.data.get("seed"), r.name))
        params = {r.data["params"] for r in config.runs if r.data.get("params")}
        # Seeds of one configuration build the same model; several counts would mean the
        # grouping key misses a setting, which the table then shows as the largest count.
        config.params_m = max(params) / 1e6 if params else None
    return sorted(groups.values(), key=lambda c: c.key)


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
        k = self.grassmann.key
        return {
            "source": k.source, "source_label": self.grassmann.source_label, "task": k.task,
            "seq_len": k.seq_len, "n_layers": k.n_layers, "preset": k.preset, "corpus": k.corpus,
            "snli_mode": k.snli_mode, "grassmann_tag": k.tag,
            "transformer_tag": self.transformer.key.tag,
            "best_val": self.measure("best_val"), "test": self.measure("test"),
        }


def pair_configs(configs: list[Config]) -> list[Gap]:
    """Pair each Grassmann configuration with its Transformer baseline.

    The baseline must share source, task, L, N, preset, corpus and SNLI mode. Its tag
    must equal the Grassmann tag, or be empty: an ablation tag such as "nonorm" changes
    only the Grassmann model, so it is compared with the untagged Transformer.
    """
    transformers = {(c.key.pair_key(), c.key.tag): c for c in configs if c.key.model == "transformer"}
    gaps = []
    for config in configs:
        if config.key.model != "grassmann":
            continue
        base = config.key.pair_key()
        partner = transformers.get((base, config.key.tag)) or transformers.get((base, ""))
        if partner is not None:
            gaps.append(Gap(config, partner))
    return gaps


# --------------------------------------------------------------------------- summary


SECTION_TITLES = {
    "paper_comparison": "Paper comparison (full corpus)",
    "reduced_corpus": "Reduced-corpus results (not comparable with the paper)",
    "published_reference": "Published results (reference only)",
}


@dataclass
class TaskSummary:
    """Everything reported for one task, split into the sections of the report."""

    task: str
    runs: list[Run]
    sections: dict[str, list[Config]]

    @property
    def excluded_runs(self) -> list[Run]:
        return [r for r in self.runs if not r.included]

    def gaps(self, section: str) -> list[Gap]:
        return pair_configs(self.sections[section])

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": METRIC_DESCRIPTIONS[self.task],
            "n_runs": len(self.runs),
            "excluded_runs": [{"run_name": r.name, "status": r.status, "path": str(r.path.parent)}
                              for r in self.excluded_runs],
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
        "test": "test perplexity of the best-validation checkpoint",
        "gap": "Grassmann/Transformer PPL ratio: exp(mean log PPL_G - mean log PPL_T), "
               "Welch 95% CI on the log scale",
    },
    "snli": {
        "best_val": "best validation accuracy over epochs (higher is better)",
        "test": "test accuracy of the best-validation checkpoint",
        "gap": "Grassmann - Transformer accuracy, Welch 95% CI",
    },
}


def summarize_task(task: str, runs: list[Run], published: list[Config]) -> TaskSummary:
    """Split one task's configurations into the report's sections.

    Only full-corpus runs go into "paper_comparison", together with the published rows
    at the same setting; reduced/custom-corpus runs always go into "reduced_corpus"; the
    remaining published rows are shown on their own, for reference only.
    """
    task_runs = [r for r in runs if r.task == task]
    ours = group_runs(task_runs)
    published = [c for c in published if c.key.task == task]
    full = [c for c in ours if c.key.comparable]
    settings = {c.key.setting() for c in full}
    beside = [c for c in published if c.key.setting() in settings]
    return TaskSummary(task, task_runs, {
        "paper_comparison": full + beside,
        "reduced_corpus": [c for c in ours if not c.key.comparable],
        "published_reference": [c for c in published if c.key.setting() not in settings],
    })


def json_safe(obj: Any) -> Any:
    """`obj` with NaN/inf floats replaced by None, so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def summarize(runs: list[Run], published: list[Config]) -> dict[str, TaskSummary]:
    """One `TaskSummary` per task."""
    return {task: summarize_task(task, runs, published) for task in TASKS}
