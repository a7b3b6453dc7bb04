"""Knobs and planning: speedrun.sh's environment knobs, parsed and checked, and the `Run`s
of a grid built from them (`Planner.speedrun`, `Planner.window`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..runs import default_cache_dir, parse_option, run_name

MODES = ("train", "eval", "both")
USAGE = "./speedrun.sh {grassmann|transformer|all} {wikitext|snli|all} [train|eval|both]"
# QUICK=1, the smoke run: the grid's run list (both tasks and models, the controls, every
# evaluation) on tiny models for a few steps, so that every code path runs in minutes on a
# CPU. The knobs below are its defaults (the user's own settings win); the runs carry
# --quick, which marks their results.json "quick": true, and the analysis never compares them.
QUICK_KNOBS = {"LAYER_DEPTHS_OVERRIDE": "2", "SEQ_LENS": "32", "SEEDS": "0", "EPOCHS": "2", "SNLI_LAYERS": "2",
               "RUNS_PER_GPU": "2"}  # two at once: a tiny run is mostly process start-up
QUICK_ARGS = ["--quick", "--max-steps-per-epoch", "3", "--eval-max-batches", "2", "--batch-size", "4",
              "--warmup-steps", "1", "--log-every", "1"]
# the models' widths under QUICK: the from-scratch models' (EXTRA_ARGS' --opt override them;
# d_model 16 keeps a 30k-token embedding's two checkpoints at 12 MB) and the DistilBERT heads'
QUICK_OPTS = ("d_model=16", "d_ff=32", "n_heads=2", "reduced_dim=8")
QUICK_HEAD_OPTS = {"transformer": ("d_model=32", "d_ff=64"), "grassmann": ("d_model=32", "d_ff=64", "reduced_dim=8")}
# the DistilBERT heads' backbone under QUICK without DISTILBERT_DIR: a tiny random one, made
# once under CACHE_DIR (models.snli_heads.save_tiny_backbone), not the 250 MB download
QUICK_BACKBONE = "quick-distilbert-tiny"
TRAIN_MODULE = {"wikitext": "grassmann_flows.train", "snli": "grassmann_flows.train_snli"}
EVAL_MODULE = {"wikitext": "grassmann_flows.eval_wikitext", "snli": "grassmann_flows.eval_snli"}
# Flags the grid sets itself from its knobs; in EXTRA_ARGS they would silently rename nothing.
GRID_FLAGS = ("--lr", "--seed", "--preset", "--tag", "--out-dir", "--n-layers", "--seq-len", "--model",
              "--mode", "--resume", "--backbone")
# The controls of the paper grid (post-LN Transformer, Grassmann without the extra projection).
CONTROLS = {"transformer": ("postln", "block=postln"), "grassmann": ("noextra", "extra_proj=none")}
# The ablations of technical.md §7, as (tag, option, (L, N) settings) on the paper preset.
ABLATIONS = (("nonorm", "normalize=false", ((128, 6), (256, 12))),
             ("w888", "offsets=1,2,4,8,8,8", ((128, 6),)),
             ("sched_all", "schedule=all", ((256, 12),)))
WINDOW_STAGES = ("main", "controls", "pairs", "presets", "ablations", "snli")
PAPER_SETTINGS = ((128, 6), (256, 12))  # Table 1 and Table 2


class PreflightError(RuntimeError):
    """A precondition of the whole grid is not met; reported as one line before any run."""


# --------------------------------------------------------------------------- knobs


def _ints(env: dict[str, str], key: str, default: str) -> list[int]:
    raw = env.get(key) or default
    try:
        values = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise PreflightError(f"{key} must be comma-separated integers, got {raw!r}") from None
    if not values:
        raise PreflightError(f"{key} is empty")
    return values


def _int(env: dict[str, str], key: str, default: int | None, minimum: int = 0) -> int | None:
    raw = env.get(key, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PreflightError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise PreflightError(f"{key} must be at least {minimum}, got {value}")
    return value


def _choice(env: dict[str, str], key: str, default: str, choices: Iterable[str]) -> str:
    value = env.get(key) or default
    if value not in choices:
        raise PreflightError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass
class Knobs:
    """The environment knobs of speedrun.sh, parsed and checked (see its header)."""

    depths: list[int]
    seq_lens: list[int]
    seeds: list[int]
    lrs: list[float] | None  # None: each task's default learning rate
    presets: list[str]
    epochs: int | None
    mixer_impl: str | None
    snli_mode: str
    snli_layers: int
    distilbert_dir: str | None
    quick_backbone: bool  # distilbert_dir is QUICK's tiny random DistilBERT (made by preflight)
    data_dir: str | None
    out_root: Path
    quick: bool
    resume: bool
    nproc: int
    runs_per_gpu: int | None  # None: automatic
    parallel_runs: int | None
    tag: str
    extra: list[str]
    patience: int | None
    controls: bool

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Knobs":
        from ..models import PRESETS

        quick = env.get("QUICK", "0") == "1"
        if quick:
            defaults = {k: v for k, v in QUICK_KNOBS.items() if not (k == "RUNS_PER_GPU" and env.get("PARALLEL_RUNS"))}
            env = {**defaults, **{k: v for k, v in env.items() if v}}
        presets = [p for p in (env.get("PRESET") or "paper").split(",") if p]
        for p in presets:
            if p not in PRESETS:
                raise PreflightError(f"PRESET must be one or more of {', '.join(PRESETS)} (comma-separated); got {p!r}")
        lrs = None
        if env.get("LRS"):
            try:
                lrs = [float(x) for x in env["LRS"].split(",") if x.strip()]
            except ValueError:
                raise PreflightError(f"LRS must be comma-separated numbers, got {env['LRS']!r}") from None
            if not lrs or any(lr <= 0 for lr in lrs):
                raise PreflightError(f"LRS must hold positive learning rates, got {env['LRS']!r}")
        extra = shlex.split(env.get("EXTRA_ARGS", ""))
        taken = [a for a in extra if a.split("=")[0] in GRID_FLAGS]
        if taken:
            raise PreflightError(f"EXTRA_ARGS may not set {', '.join(taken)}: the grid sets it from its knobs "
                                 "(LRS, SEEDS, PRESET, TAG, LAYER_DEPTHS_OVERRIDE, SEQ_LENS, DISTILBERT_DIR)")
        knobs = cls(
            depths=_ints(env, "LAYER_DEPTHS_OVERRIDE", "6,12"), seq_lens=_ints(env, "SEQ_LENS", "128,256"),
            seeds=_ints(env, "SEEDS", "0,1,2"), lrs=lrs, presets=presets,
            epochs=_int(env, "EPOCHS", None, 1),
            mixer_impl=_choice(env, "MIXER_IMPL", "fast", ("naive", "fast", "fused")) if env.get("MIXER_IMPL") else None,
            snli_mode=_choice(env, "SNLI_MODE", "distilbert", ("distilbert", "scratch")),
            snli_layers=_int(env, "SNLI_LAYERS", 6, 1),
            distilbert_dir=env.get("DISTILBERT_DIR") or (str(default_cache_dir() / QUICK_BACKBONE) if quick else None),
            quick_backbone=quick and not env.get("DISTILBERT_DIR"),
            data_dir=env.get("DATA_DIR") or None, out_root=Path(env.get("OUT_ROOT") or "outputs"),
            quick=quick, resume=env.get("RESUME", "0") == "1",
            nproc=_int(env, "NPROC", 1, 1), runs_per_gpu=_int(env, "RUNS_PER_GPU", None, 1),
            parallel_runs=_int(env, "PARALLEL_RUNS", None, 1), tag=env.get("TAG", ""), extra=extra,
            patience=_int(env, "PATIENCE", None, 0),
            controls=_choice(env, "CONTROLS", "1" if "paper" in presets else "0", ("0", "1")) == "1",
        )
        if knobs.parallel_runs and (knobs.runs_per_gpu or knobs.nproc > 1):
            raise PreflightError("PARALLEL_RUNS (runs at once, one GPU each) is the older spelling of "
                                 "RUNS_PER_GPU=1 on that many GPUs: set it alone, or use RUNS_PER_GPU and NPROC")
        return knobs


# --------------------------------------------------------------------------- planning


@dataclass
class Run:
    """One training run of the grid (and the evaluation that follows it)."""

    name: str
    stage: str
    task: str
    model: str
    args: list[str]  # the training module's arguments, --out-dir and --resume excepted
    expect: dict[str, Any]  # summary fields its checkpoint must carry (eval --expect, RESUME)
    cost_key: tuple  # runs with one key cost the same per step (one measured step serves all)
    snli_mode: str | None = None
    # filled in by `preflight`: training steps, validation batches per epoch, epochs
    steps: int = 0
    val_batches: int = 0
    epochs: int = 0

    @property
    def compile_key(self) -> tuple[str, ...]:
        """What decides the compiled graph: the arguments without seed, lr and tag."""
        skip = {"--seed", "--lr", "--tag"}
        return tuple(a for i, a in enumerate(self.args) if a not in skip and (i == 0 or self.args[i - 1] not in skip))

    @property
    def train_module(self) -> str:
        return TRAIN_MODULE[self.task]

    @property
    def eval_module(self) -> str:
        return EVAL_MODULE[self.task]


def _default_lr(task: str) -> float:
    from ..spec import SNLI_DEFAULTS
    from ..training import TrainConfig

    return TrainConfig.lr if task == "wikitext" else SNLI_DEFAULTS["lr"]


def transformer_preset(preset: str, **options: Any) -> str:
    """The first preset (in PRESETS order) under which the Transformer resolves to the same
    configuration as under `preset`: the one preset it is trained and named under."""
    from ..models import PRESETS, resolve_config

    target = resolve_config("transformer", preset, **options).to_dict()
    return next(p for p in PRESETS if resolve_config("transformer", p, **options).to_dict() == target)


class Planner:
    """Builds `Run`s from the knobs; `add` drops a run already planned (the shared Transformer)."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.runs: list[Run] = []
        self._names: set[str] = set()
        common: list[str] = []
        if knobs.data_dir:
            common += ["--data-dir", knobs.data_dir]
        if knobs.epochs:
            common += ["--epochs", str(knobs.epochs)]
        if knobs.patience is not None:
            common += ["--patience", str(knobs.patience)]
        if knobs.quick:
            common += QUICK_ARGS
        self.common = common
        # model options of every from-scratch run: QUICK's tiny widths, then EXTRA_ARGS' (which win)
        self.quick_opts = [x for o in QUICK_OPTS for x in ("--opt", o)] if knobs.quick else []
        self.extra_opts = [*(QUICK_OPTS if knobs.quick else ()),
                           *(self._opt_value(knobs.extra, i) for i, a in enumerate(knobs.extra) if a == "--opt")]

    @staticmethod
    def _opt_value(args: list[str], i: int) -> str:
        if i + 1 >= len(args):
            raise PreflightError("EXTRA_ARGS ends with --opt and no KEY=VALUE")
        return args[i + 1]

    def _options(self, opts: Iterable[str], **shape: Any) -> dict[str, Any]:
        try:
            options = dict(parse_option(o) for o in [*self.extra_opts, *opts])
        except ValueError as e:
            raise PreflightError(str(e)) from None
        if self.knobs.mixer_impl:
            options["mixer_impl"] = self.knobs.mixer_impl
        return {**options, **shape}

    def _lrs(self, task: str) -> list[float]:
        return self.knobs.lrs or [_default_lr(task)]

    def _tag(self, tag: str) -> str:
        return "_".join(t for t in (self.knobs.tag, tag) if t)

    def add(self, run: Run) -> None:
        if run.name not in self._names:
            self._names.add(run.name)
            self.runs.append(run)

    def lm(self, model: str, L: int, N: int, seed: int, lr: float, preset: str, stage: str,
           tag: str = "", opts: tuple[str, ...] = ()) -> Run:
        if model == "transformer":
            try:
                preset = transformer_preset(preset, **self._options(opts, n_layers=N, n_positions=L))
            except ValueError as e:
                raise PreflightError(f"{model} L={L} N={N}: {e}") from None
        tag = self._tag(tag)
        args = ["--model", model, "--preset", preset, "--seq-len", str(L), "--n-layers", str(N),
                "--seed", str(seed), "--lr", repr(lr), *(["--tag", tag] if tag else []),
                *self.quick_opts, *[x for o in opts for x in ("--opt", o)], *self._impl(), *self.common,
                *self.knobs.extra]
        expect = {"model": model, "seq_len": L, "n_layers": N, "preset": preset, "lr": lr, "seed": seed, "tag": tag}
        return Run(run_name(model, "wikitext", L, N, seed, tag, preset=preset, lr=lr), stage, "wikitext", model,
                   args, expect, ("wikitext", model, L, N))

    def snli(self, model: str, seed: int, lr: float, preset: str, stage: str, mode: str,
             head: str | None = None) -> Run:
        """One SNLI run; `head` picks the DistilBERT Transformer head's layout (joint | siamese)."""
        tag = self._tag("")
        tail = [*(["--tag", tag] if tag else []), *self.common]
        expect: dict[str, Any] = {"model": model, "lr": lr, "seed": seed, "tag": tag, "snli_mode": mode}
        if mode == "distilbert":
            # EXTRA_ARGS' model options configure the from-scratch models, not the DistilBERT heads.
            extra = [a for i, a in enumerate(self.knobs.extra)
                     if a != "--opt" and (i == 0 or self.knobs.extra[i - 1] != "--opt")]
            backbone = ["--backbone", self.knobs.distilbert_dir] if self.knobs.distilbert_dir else []
            head_args = [*(["--transformer-head", head] if head else []),
                         *(x for o in QUICK_HEAD_OPTS[model] if self.knobs.quick for x in ("--head-opt", o))]
            if model == "transformer":
                expect["transformer_head"] = head or "joint"
            args = ["--mode", "distilbert", "--model", model, "--seed", str(seed), "--lr", repr(lr), *backbone,
                    *head_args, *tail, *extra]
            return Run(run_name(model, "snli", None, None, seed, tag, preset=None, lr=lr, head=head), stage, "snli",
                       model, args, expect, ("snli", "distilbert", model, head or ""), snli_mode=mode)
        N = self.knobs.snli_layers
        if model == "transformer":
            try:
                preset = transformer_preset(preset, **self._options((), n_layers=N, n_positions=128, causal=False))
            except ValueError as e:
                raise PreflightError(f"{model} SNLI N={N}: {e}") from None
        args = ["--model", model, "--preset", preset, "--n-layers", str(N), "--seed", str(seed), "--lr", repr(lr),
                *self.quick_opts, *self._impl(), *tail, *self.knobs.extra]
        expect.update(preset=preset, n_layers=N)
        return Run(run_name(model, "snli", 128, N, seed, tag, preset=preset, lr=lr), stage, "snli", model,
                   args, expect, ("snli", "scratch", model, N), snli_mode=mode)

    def _impl(self) -> list[str]:
        return ["--mixer-impl", self.knobs.mixer_impl] if self.knobs.mixer_impl else []

    # ---- the two plans

    def lm_grid(self, models: list[str], settings: Iterable[tuple[int, int]], presets: list[str], stage: str,
                controls: bool = False) -> None:
        """Every (L, N) x seed x lr x model under each preset; the controls after them."""
        settings = list(settings)
        for lr in self._lrs("wikitext"):
            for preset in presets:
                for L, N in settings:
                    for seed in self.knobs.seeds:
                        for model in models:
                            self.add(self.lm(model, L, N, seed, lr, preset, stage))
        if controls:
            for lr in self._lrs("wikitext"):
                for L, N in settings:
                    for seed in self.knobs.seeds:
                        for model in models:
                            tag, opt = CONTROLS[model]
                            self.add(self.lm(model, L, N, seed, lr, "paper", "controls", tag, (opt,)))

    def snli_grid(self, models: list[str], mode: str, stage: str) -> None:
        """Every seed x lr x model (x preset, from scratch). With the DistilBERT heads the
        Transformer also runs as a siamese head, the Grassmann head's classifier on sentences
        encoded apart: the control that isolates the mixer from the classifier."""
        heads = {"transformer": [None, "siamese"]} if mode == "distilbert" else {}
        for lr in self._lrs("snli"):
            for preset in self.knobs.presets:
                for seed in self.knobs.seeds:
                    for model in models:
                        for head in heads.get(model, [None]):
                            self.add(self.snli(model, seed, lr, preset, stage, mode, head))

    def speedrun(self, models: list[str], datasets: list[str]) -> list[Run]:
        """The grid of `./speedrun.sh MODEL DATASET`: main runs first, then the controls."""
        k = self.knobs
        if "wikitext" in datasets:
            settings = [(L, N) for N in k.depths for L in k.seq_lens]
            self.lm_grid(models, settings, k.presets, "main", controls=k.controls and "paper" in k.presets)
        if "snli" in datasets:
            self.snli_grid(models, k.snli_mode, "snli")
        return self.runs

    def window(self, stages: Iterable[str]) -> list[Run]:
        """The GPU window's priority order: the paper's two settings, their controls, the other
        (L, N), the reproduction presets, the ablations, SNLI from scratch."""
        both = ["transformer", "grassmann"]
        for stage in stages:
            if stage == "main":
                self.lm_grid(both, PAPER_SETTINGS, ["paper"], "main")
            elif stage == "controls":
                self.lm_grid(both, PAPER_SETTINGS, [], "controls", controls=True)
            elif stage == "pairs":
                self.lm_grid(both, ((128, 12), (256, 6)), ["paper"], "pairs")
            elif stage == "presets":
                self.lm_grid(both, ((256, 12),), ["preln_all_offsets", "preln_per_layer"], "presets")
            elif stage == "ablations":
                for tag, opt, settings in ABLATIONS:
                    for lr in self._lrs("wikitext"):
                        for L, N in settings:
                            for seed in self.knobs.seeds:
                                self.add(self.lm("grassmann", L, N, seed, lr, "paper", "ablations", tag, (opt,)))
            elif stage == "snli":
                self.snli_grid(both, "scratch", "snli")
            else:
                raise PreflightError(f"WINDOW_STAGES: unknown stage {stage!r}; choose from {', '.join(WINDOW_STAGES)}")
        return self.runs
