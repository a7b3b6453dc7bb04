"""Reading runs: `results.json` (with the `config.json` and `eval_test.json` beside it),
one run per (configuration, seed), and the key that says which configuration a run is.

A run directory is read whatever its age or kind: runs of older schemas (no `lr`, `preset`
or `seed` in results.json: they are taken from config.json), QUICK smoke runs (marked
`"quick": true`, or, before that field, `train.max_steps_per_epoch` set in config.json),
runs evaluated again afterwards (`eval_test.json`), controls, and runs that diverged or
were interrupted (listed, kept out of every mean). A run directory without results.json
(a run still training) is not read.

* Test numbers come from `eval_test.json` where the run has one (the evaluation of
  best.pt that `grassmann_flows.eval_{wikitext,snli}` writes), else from the test
  evaluation at the end of training in results.json.
* Duplicates: a rerun or a resumed copy of the same (configuration, seed) is one run, not
  one more seed. `dedupe_runs` keeps the newest finished copy and reports the others.
* The configuration key (`ConfigKey`) holds everything but the seed: task, model, L, N,
  preset, tag, corpus, SNLI mode, the controls' `block` and `extra_proj` (read from
  results.json or config.json, never from directory names), the lr, the settings a preset
  gives both models (`shared`), the model's size (`width`) and whether it is a QUICK run.
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

from ..utils.paths import REPO_ROOT, display_path

# The repository (utils/paths.py): its outputs/
# and results/ are the defaults of the command-line entry points.
PUBLISHED_JSON = REPO_ROOT / "results" / "reference" / "published.json"
OUTPUTS_ROOT = REPO_ROOT / "outputs"
# Where the entry points write what they derive: git-ignored, so analysis never dirties a tracked file.
ANALYSIS_DIR = OUTPUTS_ROOT / "analysis"
FIGURES_DIR = OUTPUTS_ROOT / "figures"
TASKS = ("wikitext", "snli")
MODELS = ("transformer", "grassmann")
# Only the official splits may be set against the paper; anything else is "reduced".
COMPARABLE_CORPUS = "full"
# The paper's model size (d_model, d_ff, n_heads, reduced_dim); a run of another size is not comparable.
PAPER_WIDTH = (256, 1024, 4, 32)
WIDTH_FIELDS = ("d_model", "d_ff", "n_heads", "reduced_dim")
OURS = "ours"
_TIMESTAMP_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


# Model settings that a preset sets for the Transformer and the Grassmann model alike; a
# preset that changes them (preln_all_offsets: FFN dropout 0.1) trains its own Transformer.
SHARED_MODEL_FIELDS = ("dropout", "ffn_dropout", "init")
# What a field's absence from an older config.json meant: before ffn_dropout existed the FFN
# had no dropout on its hidden activations, so such runs pool with ffn_dropout = 0.0 runs.
SHARED_MODEL_DEFAULTS = {"ffn_dropout": 0.0}


class ResultsError(RuntimeError):
    """A problem with the input that the scripts report as a one-line error."""


def order_key(value: Any) -> Any:
    """A sort key for values that mix None with numbers or strings, nested tuples included:
    None sorts first, and None is never compared with a value."""
    if isinstance(value, (tuple, list)):
        return tuple(order_key(v) for v in value)
    return (value is not None, value if value is not None else 0)


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
    eval_test: dict[str, Any] = field(default_factory=dict)  # eval_test.json, when the run has one

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
    def test_source(self) -> str:
        """Where `test` comes from: eval_test.json (an evaluation of best.pt run afterwards,
        on the whole test split) when the run has one, else results.json."""
        return "eval_test.json" if self.eval_test else "results.json"

    @property
    def test(self) -> float | None:
        """Test PPL / accuracy of the best-validation checkpoint, when it was evaluated."""
        if self.eval_test:  # WikiText-2: the non-overlapping blocks, as in training
            test = self.eval_test.get("blocks", {}) if self.task == "wikitext" else self.eval_test
        else:
            test = self.data.get("test") or {}
        return test.get("ppl" if self.task == "wikitext" else "acc")

    @property
    def seed(self) -> int | None:
        """The summary field `seed`, else config.json `train.seed`."""
        return self._setting("seed", "train", "seed")

    @property
    def quick(self) -> bool:
        """A QUICK smoke run: marked `quick` in results.json, or (runs written before that
        field) trained with `train.max_steps_per_epoch` set. Never compared with real runs."""
        return bool(self.data.get("quick") or self._setting("max_steps_per_epoch", "train", "max_steps_per_epoch"))

    @property
    def width(self) -> tuple | None:
        """(d_model, d_ff, n_heads, reduced_dim) of a from-scratch model, from config.json's
        `model` section (reduced_dim: the Grassmann mixer's; None for the Transformer);
        None when config.json gives no d_model (DistilBERT heads, very old runs)."""
        model = self.config.get("model")
        if not isinstance(model, dict) or model.get("d_model") is None:
            return None
        mixer = model.get("mixer") if self.data["model"] == "grassmann" else None
        reduced = mixer.get("reduced_dim") if isinstance(mixer, dict) else None
        return (model.get("d_model"), model.get("d_ff"), model.get("n_heads"), reduced)

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
        return tuple(model.get(k, SHARED_MODEL_DEFAULTS.get(k)) for k in SHARED_MODEL_FIELDS)

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
            head=d.get("transformer_head"), width=self.width, quick=self.quick,
        )


def resolve_output_dir(arg: str | None, outputs_root: Path = OUTPUTS_ROOT) -> Path:
    """The directory to analyse: `arg`, else all of `outputs/` (every run below it)."""
    path = Path(arg) if arg is not None else outputs_root
    if not path.is_dir():
        raise ResultsError(f"output directory not found: {path}")
    return path


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
            # another tool's results.json, or a run cut before it recorded what it was
            print(f"skipped {display_path(path)}: task/model not one of {TASKS}/{MODELS}", file=sys.stderr)
            continue
        config, evaluated = (path.with_name(name) for name in ("config.json", "eval_test.json"))
        runs.append(Run(path, data, _read_json(config) if config.is_file() else {},
                        _read_json(evaluated) if evaluated.is_file() else {}))
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
        copies.setdefault((run.key, run.seed), []).append(run)
    kept, dropped = [], []
    for group in copies.values():
        winner = max(group, key=lambda r: (r.included, r.recency))
        kept.append(winner)
        dropped += [(r, winner) for r in group if r is not winner]
    return sorted(kept, key=lambda r: r.path), sorted(dropped, key=lambda d: d[0].path)


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class ConfigKey:
    """Everything that identifies a configuration except the seed.

    For published rows `preset` is the harness preset the row corresponds to (or a short
    description when none does) and `tag` is the row's variant within its source. `block`
    and `extra_proj` tell the control runs apart (None where not applicable or unknown).
    `width` is (d_model, d_ff, n_heads, reduced_dim) where config.json gives it, so runs of
    different sizes never pool; `quick` marks QUICK smoke runs, which pair only with each other.
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
    width: tuple | None = None
    quick: bool = False

    @property
    def section(self) -> str:
        """The report section of one of our configurations: "quick" (smoke runs),
        "reduced_corpus" (not the official splits), "other_width" (full corpus, a d_model,
        d_ff, n_heads or reduced_dim other than the paper's) or "paper_comparison"."""
        if self.quick:
            return "quick"
        if self.corpus != COMPARABLE_CORPUS:
            return "reduced_corpus"
        if self.width_label:
            return "other_width"
        return "paper_comparison"

    @property
    def comparable(self) -> bool:
        """Whether the numbers may be set against the paper: official splits, the paper's
        model size, not a smoke run (published rows always are)."""
        return self.source != OURS or self.section == "paper_comparison"

    @property
    def width_label(self) -> str:
        """The sizes that differ from the paper's (e.g. "d128 ff512"), "" at the paper's size."""
        if self.width is None:
            return ""
        return " ".join(f"{prefix}{value}" for prefix, value, paper in zip(("d", "ff", "h", "r"), self.width, PAPER_WIDTH)
                        if value is not None and value != paper)

    def setting(self) -> tuple:
        """What a published row must share with our runs to be shown beside them.

        SNLI pairs by mode: DistilBERT-head runs with the paper's Table 3, from-scratch
        runs with the reproductions' from-scratch numbers.
        """
        return (self.seq_len, self.n_layers) if self.task == "wikitext" else (self.snli_mode,)

    def pair_base(self) -> tuple:
        """What a Grassmann and a Transformer configuration must share to be compared."""
        # Sizes must match too (the reduced_dim of the Grassmann mixer has no Transformer twin).
        size = self.width[:3] if self.width else None
        base = (self.source, self.task, self.corpus, self.snli_mode, self.quick, size)
        # The DistilBERT heads have fixed sizes; from-scratch models must match in L and N.
        return base if self.snli_mode == "distilbert" else base + (self.seq_len, self.n_layers)

    def without_lr(self) -> "ConfigKey":
        return replace(self, lr=None)

    @property
    def label(self) -> str:
        """Short name of the variant: T-preLN / T-postLN / T-siamese (the DistilBERT head that
        encodes the sentences apart), G-paper / G-paper[out] (extra projection on the blend) /
        G-no-extra (paper preset), G (other presets); then the sizes that differ from the paper's."""
        return " ".join(filter(None, (self._variant, self.width_label)))

    @property
    def _variant(self) -> str:
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


def json_safe(obj: Any) -> Any:
    """`obj` with NaN/inf floats replaced by None, so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

