"""Shared code for `analyze_best_results.py` and `visualize_results.py`.

Loads the `results.json` files a training sweep writes (with the `config.json` beside
each), keeps one run per (configuration, seed), groups runs into configurations (one
configuration = everything but the seed), picks each model's learning rate on validation,
computes per-configuration statistics over seeds and the Grassmann-vs-Transformer gaps
with 95% confidence intervals, and merges in the published numbers from
`results/reference/published.json`.

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
* The Student-t numerics and Welch's interval live in `_stats.py`.

Bookkeeping
-----------
* Duplicates: a rerun or a resumed copy of the same (configuration, seed) is one run, not
  one more seed. `dedupe_runs` keeps the newest finished copy and reports the others.
* Learning rate: a configuration is also keyed by its lr (`train.lr` of config.json, or
  the `lr` summary field). `select_lr` picks, per model configuration, the lr with the
  best *validation* mean over seeds; test numbers are reported at that lr, from that
  lr's seeds. Test never takes part in the choice.
* Controls: the Transformer's `block` (pre-LN / post-LN) and the Grassmann mixer's
  `extra_proj` are part of the configuration, read from results.json or config.json
  (never from directory names), so the control runs form their own configurations and
  `pair_configs` reports G-paper vs T-preLN, G-paper vs T-postLN and G-no-extra vs T.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the package, installed or not

from _stats import Stat, make_stat, welch_interval  # noqa: E402
from grassmann_flows.utils.paths import display_path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_JSON = REPO_ROOT / "results" / "reference" / "published.json"
OUTPUTS_ROOT = REPO_ROOT / "outputs"
TASKS = ("wikitext", "snli")
MODELS = ("transformer", "grassmann")
# Only the official splits may be set against the paper; anything else is "reduced".
COMPARABLE_CORPUS = "full"
OURS = "ours"
_TIMESTAMP_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


# Model settings that a preset sets for the Transformer and the Grassmann model alike; a
# preset that changes them (preln_all_offsets: FFN dropout 0.1) trains its own Transformer.
SHARED_MODEL_FIELDS = ("dropout", "ffn_dropout", "init")


class ResultsError(RuntimeError):
    """A problem with the input that the scripts report as a one-line error."""


# --------------------------------------------------------------------------- runs


def _sweep_stamp(path: Path) -> str:
    """The timestamp of the sweep directory a run lies in ("" when none is timestamped)."""
    return next((p.name for p in path.parents if _TIMESTAMP_DIR.match(p.name)), "")


@dataclass(frozen=True)
class Run:
    """One training run: its `results.json` and, when present, the `config.json` beside it."""

    path: Path
    data: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

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

    def _setting(self, name: str, *config_path: str) -> Any:
        """A setting from results.json, else from config.json (`config_path`), else None."""
        if self.data.get(name) is not None:
            return self.data[name]
        node: Any = self.config
        for part in config_path:
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @property
    def lr(self) -> float | None:
        """Peak learning rate: the summary field `lr`, else config.json `train.lr`."""
        lr = self._setting("lr", "train", "lr")
        return float(lr) if lr is not None else None

    @property
    def block(self) -> str | None:
        """Block layout of a from-scratch model (`model.block`); None for DistilBERT heads."""
        return self._setting("block", "model", "block")

    @property
    def extra_proj(self) -> str | None:
        """The Grassmann mixer's extra d x d projection (`model.mixer.extra_proj`)."""
        if self.data["model"] != "grassmann":
            return None
        return self._setting("extra_proj", "model", "mixer", "extra_proj")

    @property
    def shared(self) -> tuple | None:
        """The settings a preset gives both models alike (`model.{dropout,ffn_dropout,init}`):
        a Grassmann run is compared with the Transformer trained with the same ones."""
        model = self.config.get("model")
        if not isinstance(model, dict):
            return None
        return tuple(model.get(k) for k in SHARED_MODEL_FIELDS)

    @property
    def recency(self) -> tuple:
        """Sort key, newest last: sweep timestamp, then `finished_at` if recorded, then mtime."""
        return (_sweep_stamp(self.path), str(self.data.get("finished_at") or ""), self.path.stat().st_mtime)

    @property
    def key(self) -> "ConfigKey":
        d = self.data
        return ConfigKey(
            source=OURS, task=d["task"], model=d["model"], seq_len=d.get("seq_len"),
            n_layers=d.get("n_layers"), preset=d.get("preset"), tag=d.get("tag") or "",
            corpus=d.get("corpus", "unknown"),
            snli_mode=d.get("snli_mode") if d["task"] == "snli" else None,
            block=self.block, extra_proj=self.extra_proj, lr=self.lr, shared=self.shared,
            head=d.get("transformer_head"),
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())  # json accepts the NaN a diverged run may hold
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON ({err})") from err


def load_runs(output_dir: Path, *, allow_empty: bool = False) -> list[Run]:
    """Every `results.json` below `output_dir` (with its config.json), sorted by path."""
    if not output_dir.is_dir():
        if allow_empty:
            return []
        raise ResultsError(f"output directory not found: {output_dir}")
    runs = []
    for path in sorted(output_dir.rglob("results.json")):
        data = _read_json(path)
        if data.get("task") not in TASKS or data.get("model") not in MODELS:
            raise ResultsError(f"{path}: task/model must be one of {TASKS}/{MODELS}")
        config_path = path.with_name("config.json")
        runs.append(Run(path, data, _read_json(config_path) if config_path.is_file() else {}))
    if not runs and not allow_empty:
        raise ResultsError(f"no results.json found under {output_dir}")
    return runs


def load_committed_runs(root: Path = OUTPUTS_ROOT, repo: Path = REPO_ROOT) -> list[Run]:
    """The runs under `root` that git tracks (staged or committed), for the blog and figures.

    Runs a developer made locally and did not `git add` are left out (and counted on
    stderr), so the published section depends only on what the repository holds. Outside
    a git checkout every run under `root` is read.
    """
    runs = load_runs(root, allow_empty=True)
    try:
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--", str(root)],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return runs
    tracked = {(repo / name).resolve() for name in listed.split("\0") if name}
    kept = [r for r in runs if r.path.resolve() in tracked]
    if len(kept) < len(runs):
        print(f"left out {len(runs) - len(kept)} run(s) under {display_path(root)} that git does not track "
              "(git add them to include them)", file=sys.stderr)
    return kept


def dedupe_runs(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """One run per (configuration, seed): the newest completed copy, else the newest copy.

    A rerun or a resumed copy of a run must not count as one more seed (it would shrink
    the std and the CI). Returns (kept runs, [(dropped run, the run kept instead)]).
    """
    copies: dict[tuple, list[Run]] = {}
    for run in runs:
        copies.setdefault((run.key, run.data.get("seed")), []).append(run)
    kept, dropped = [], []
    for group in copies.values():
        winner = max(group, key=lambda r: (r.included, r.recency))
        kept.append(winner)
        dropped += [(r, winner) for r in group if r is not winner]
    return sorted(kept, key=lambda r: r.path), sorted(dropped, key=lambda d: d[0].path)


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True, order=True)
class ConfigKey:
    """Everything that identifies a configuration except the seed.

    For published rows `preset` is the harness preset the row corresponds to (or a short
    description when none does) and `tag` is the row's variant within its source. `block`
    and `extra_proj` tell the control runs apart (None where not applicable or unknown).
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
    block: str | None = None
    extra_proj: str | None = None
    lr: float | None = None
    shared: tuple | None = None
    head: str | None = None  # DistilBERT Transformer head: joint, or siamese (sentences apart)

    @property
    def comparable(self) -> bool:
        """Whether the numbers may be set against the paper (official splits only)."""
        return self.corpus == COMPARABLE_CORPUS

    def setting(self) -> tuple:
        """What a published row must share with our runs to be shown beside them.

        SNLI pairs by mode: DistilBERT-head runs with the paper's Table 3, from-scratch
        runs with the reproductions' from-scratch numbers.
        """
        return (self.seq_len, self.n_layers) if self.task == "wikitext" else (self.snli_mode,)

    def pair_base(self) -> tuple:
        """What a Grassmann and a Transformer configuration must share to be compared."""
        base = (self.source, self.task, self.corpus, self.snli_mode)
        # The DistilBERT heads have fixed sizes; from-scratch models must match in L and N.
        return base if self.snli_mode == "distilbert" else base + (self.seq_len, self.n_layers)

    def without_lr(self) -> "ConfigKey":
        return replace(self, lr=None)

    @property
    def label(self) -> str:
        """Short name of the variant: T-preLN / T-postLN / T-siamese (the DistilBERT head that
        encodes the sentences apart), G-paper / G-paper[out] (extra projection on the blend) /
        G-no-extra (paper preset), G (other presets)."""
        if self.model == "transformer":
            if self.head == "siamese":
                return "T-siamese"
            return {"preln": "T-preLN", "postln": "T-postLN"}.get(self.block or "", "T")
        if self.extra_proj == "none" and self.preset == "paper":
            return "G-no-extra"
        if self.preset != "paper":
            return "G"
        # runs of the paper preset from before its extra projection moved onto g say so
        return "G-paper" if self.extra_proj in (None, "g") else f"G-paper[{self.extra_proj}]"


@dataclass
class Config:
    """One configuration: our seeds of it, or one published row (a single value)."""

    key: ConfigKey
    runs: list[Run] = field(default_factory=list)
    source_label: str = "ours"
    params_m: float | None = None
    published: dict[str, Any] | None = None  # the published.json row, for published configs
    # (lr, validation Stat) of every lr tried for this model configuration, when chosen by select_lr
    lr_candidates: list[tuple[float | None, Stat]] = field(default_factory=list)

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
            "seeds": [r.data.get("seed") for r in self.included_runs],
            "run_names": [r.name for r in self.included_runs],
        }
        out["devices"] = self.devices
        for quantity in ("best_val", "test", "best_epoch", "tokens_per_s", "train_time_s", "epochs_run"):
            out[quantity] = self.stat(quantity).to_json()
        if self.lr_candidates:
            out["lr_selection"] = [{"lr": lr, "best_val": stat.to_json()} for lr, stat in self.lr_candidates]
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
    return sorted(groups.values(), key=lambda c: _sort_key(c.key))


def _sort_key(key: ConfigKey) -> tuple:
    """ConfigKey order with None placed first (keys mix None and values in one field)."""
    return tuple((v is not None, v if v is not None else 0) for v in vars(key).values())


def select_lr(configs: list[Config]) -> list[Config]:
    """Per model configuration, the lr whose mean best validation over seeds is best.

    Lower PPL wins on WikiText-2, higher accuracy on SNLI. Only validation is looked at;
    the test numbers reported are those of the chosen lr's own seeds. A configuration
    with no validation value at any lr keeps its first lr (it shows as "—" anyway).
    """
    by_model: dict[ConfigKey, list[Config]] = {}
    for config in configs:
        by_model.setdefault(config.key.without_lr(), []).append(config)
    chosen = []
    for group in by_model.values():
        group.sort(key=lambda c: (c.key.lr is None, c.key.lr or 0.0))
        sign = 1.0 if group[0].key.task == "wikitext" else -1.0
        scored = [c for c in group if c.stat("best_val").n]
        best = min(scored, key=lambda c: sign * c.stat("best_val").mean) if scored else group[0]
        best.lr_candidates = [(c.key.lr, c.stat("best_val")) for c in group] if len(group) > 1 else []
        chosen.append(best)
    return sorted(chosen, key=lambda c: _sort_key(c.key))


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


SECTION_TITLES = {
    "paper_comparison": "Paper comparison (full corpus)",
    "reduced_corpus": "Reduced-corpus results (not comparable with the paper)",
    "published_reference": "Published results (reference only)",
}


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


def run_facts(runs: list[Run]) -> dict[str, list]:
    """How runs were made, from the runs themselves: sorted corpora, epochs run, seeds, devices."""
    return {
        "corpora": sorted({r.data.get("corpus", "unknown") for r in runs}),
        "epochs": sorted({len(r.data.get("epochs") or []) for r in runs}),
        "seeds": sorted({r.data.get("seed") for r in runs}, key=str),
        "devices": sorted({str(r.data.get("device", "unknown")).split(":")[0] for r in runs}),
    }


def replace_between_markers(path: Path, begin: str, end: str, content: str) -> bool:
    """Replace the text between the one `begin` ... `end` pair of `path` by `content`.

    Nothing outside the markers changes; returns True when the file changed.
    """
    if not path.is_file():
        raise ResultsError(f"file not found: {path}")
    text = path.read_text()
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.S)
    if len(pattern.findall(text)) != 1:
        raise ResultsError(f"{path}: expected exactly one {begin} ... {end} pair")
    new = pattern.sub(lambda _: f"{begin}\n{content}\n{end}", text)
    if new != text:
        path.write_text(new)
    return new != text


def summarize_task(task: str, runs: list[Run], published: list[Config]) -> TaskSummary:
    """Split one task's configurations into the report's sections.

    Duplicates are dropped first and the lr is chosen on validation. Only full-corpus
    runs go into "paper_comparison", together with the published rows at the same
    setting; reduced/custom-corpus runs always go into "reduced_corpus"; the remaining
    published rows are shown on their own, for reference only.
    """
    task_runs, dropped = dedupe_runs([r for r in runs if r.task == task])
    candidates = group_runs(task_runs)
    ours = select_lr(candidates)
    published = [c for c in published if c.key.task == task]
    full = [c for c in ours if c.key.comparable]
    settings = {c.key.setting() for c in full}
    beside = [c for c in published if c.key.setting() in settings]
    return TaskSummary(task, task_runs, {
        "paper_comparison": full + beside,
        "reduced_corpus": [c for c in ours if not c.key.comparable],
        "published_reference": [c for c in published if c.key.setting() not in settings],
    }, dropped=dropped, candidates=candidates)


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
    """One `TaskSummary` per task; each dropped duplicate is printed to stderr."""
    summaries = {task: summarize_task(task, runs, published) for task in TASKS}
    for summary in summaries.values():
        for run, kept in summary.dropped:
            print(f"dropped duplicate run {display_path(run.path.parent)} ({run.status}); "
                  f"kept {display_path(kept.path.parent)}", file=sys.stderr)
    return summaries


# Figures of scripts/visualize_results.py (stem -> alt text), referenced from the blog.
FIGURES = {
    "published_numbers": "Published best validation perplexities and SNLI accuracies: the paper's "
                         "Tables 1-3 beside the public reproductions, one panel per table setting",
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
