"""The run grid behind speedrun.sh and scripts/gpu_window.sh: plan it, check it once, run it as a queue.

    python -m grassmann_flows.grid run {grassmann|transformer|all} {wikitext|snli|all} [train|eval|both]
    python -m grassmann_flows.grid run --window --estimate --budget-s 300 --out-dir outputs/<ts>
    python -m grassmann_flows.grid summary outputs/<ts>        # SUMMARY.md of a queue's runs

The knobs come from the environment; speedrun.sh's header lists them. One place builds the
run list, checks every precondition once before the first run (arguments, data, tokenizer,
DistilBERT weights, checkpoints to resume) and fails with one line, then keeps
RUNS_PER_GPU training processes busy on every GPU (or on the CPU). Each run logs to its
own directory, its evaluation follows it, and failures are listed at the end.

The Transformer is the same model under every Grassmann preset unless a preset changes
it, so it is keyed by its resolved configuration: it is trained, and named, once under
the first preset (in `PRESETS` order) that resolves it to that configuration.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .data.sources import REPO_ROOT, DataUnavailableError, ensure_dataset, resolve_data_dir
from .runs import default_cache_dir, parse_option, run_name

MODES = ("train", "eval", "both")
USAGE = "./speedrun.sh {grassmann|transformer|all} {wikitext|snli|all} [train|eval|both]"
QUICK_ARGS = ["--max-steps-per-epoch", "3", "--eval-max-batches", "2", "--batch-size", "4",
              "--warmup-steps", "1", "--log-every", "1"]
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
# Auto RUNS_PER_GPU: an assumed upper bound on one run's GPU memory (18M parameters, batch
# 16 x 256, bf16, compiled) and CPU cores per run (the Python launch loop, data, compile).
GPU_GIB_PER_RUN = 10
CORES_PER_RUN = 2
MAX_RUNS_PER_GPU = 8


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
        from .models import PRESETS

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
            snli_layers=_int(env, "SNLI_LAYERS", 6, 1), distilbert_dir=env.get("DISTILBERT_DIR") or None,
            data_dir=env.get("DATA_DIR") or None, out_root=Path(env.get("OUT_ROOT") or "outputs"),
            quick=env.get("QUICK", "0") == "1", resume=env.get("RESUME", "0") == "1",
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
    from .train_snli import SNLI_DEFAULTS
    from .training import TrainConfig

    return TrainConfig.lr if task == "wikitext" else SNLI_DEFAULTS["lr"]


def transformer_preset(preset: str, **options: Any) -> str:
    """The first preset (in PRESETS order) under which the Transformer resolves to the same
    configuration as under `preset`: the one preset it is trained and named under."""
    from .models import PRESETS, resolve_config

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
            common += QUICK_ARGS + ([] if knobs.epochs else ["--epochs", "1"])
        self.common = common
        self.extra_opts = [self._opt_value(knobs.extra, i) for i, a in enumerate(knobs.extra) if a == "--opt"]

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
                *[x for o in opts for x in ("--opt", o)], *self._impl(), *self.common, *self.knobs.extra]
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
            head_args = ["--transformer-head", head] if head else []
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
                *self._impl(), *tail, *self.knobs.extra]
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


# --------------------------------------------------------------------------- preflight


def newest(out_root: Path, name: str, filename: str) -> Path | None:
    """The newest <out_root>/*/<name>/<filename> (timestamped directories sort by name)."""
    found = sorted(out_root.glob(f"*/{name}/{filename}"))
    return found[-1] if found else None


def _parse(run: Run) -> argparse.Namespace:
    """The training module's parse of `run.args`, a bad flag raising PreflightError."""
    from . import train, train_snli

    parser = (train if run.task == "wikitext" else train_snli).parser()

    def error(message: str) -> None:
        raise PreflightError(f"{run.name}: {message} (check EXTRA_ARGS)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(run.args)


def preflight(runs: list[Run], knobs: Knobs, mode: str) -> None:
    """Check once what every run needs; fill in each run's step counts. Raises PreflightError.

    Arguments (each run's command parses and its model configuration resolves), the data
    (fetched once from the hub if missing and possible), the tokenizer, the DistilBERT
    weights, and with RESUME the configuration of each checkpoint to continue.
    """
    from .data.snli import SNLIDataConfig, load_snli_splits
    from .data.tokenizers import load_tokenizer
    from .data.wikitext import LMDataConfig, load_lm_splits
    from .models import resolve_config
    from .runs import dataclass_from_args, paper_batch_size
    from .train_snli import SNLI_DEFAULTS
    from .training import TrainConfig

    parsed = {run.name: _parse(run) for run in runs}  # the arguments first: they cost nothing
    data_dir = resolve_data_dir(knobs.data_dir)
    try:
        for task in dict.fromkeys(r.task for r in runs):
            ensure_dataset(task, data_dir)
    except DataUnavailableError as e:
        raise PreflightError(str(e)) from None
    if any(r.snli_mode == "distilbert" for r in runs):
        _check_backbone(knobs.distilbert_dir)
    cache = default_cache_dir()
    sizes: dict[tuple, tuple[int, int]] = {}  # data config -> (train items, validation items)
    for run in runs:
        ns = parsed[run.name]
        train_cfg = dataclass_from_args(TrainConfig, ns)
        try:
            if run.task == "wikitext":
                data_cfg: Any = dataclass_from_args(LMDataConfig, ns)
                batch = ns.batch_size or paper_batch_size(data_cfg.seq_len)
                epochs = ns.epochs or TrainConfig.epochs
                options = {**dict(parse_option(o) for o in ns.opt), "n_layers": ns.n_layers,
                           "n_positions": ns.n_positions or data_cfg.seq_len,
                           "vocab_size": len(load_tokenizer(data_cfg.tokenizer))}
                if ns.mixer_impl:
                    options["mixer_impl"] = ns.mixer_impl
                resolve_config(ns.model, ns.preset, **options)
                load = lambda: load_lm_splits(data_dir, data_cfg, cache)  # noqa: E731
            else:
                batch = ns.batch_size or SNLI_DEFAULTS["batch_size"]
                epochs = ns.epochs or SNLI_DEFAULTS["epochs"]
                if ns.mode == "distilbert":
                    data_cfg = SNLIDataConfig(tokenizer=ns.tokenizer or "bert-base-uncased", encoding="separate",
                                              sent_len=48, max_len=96)
                else:
                    data_cfg = dataclass_from_args(SNLIDataConfig, ns, encoding="pair")
                    options = {"causal": False, **({"pairing": "both"} if ns.model == "grassmann" else {}),
                               **dict(parse_option(o) for o in ns.opt), "n_layers": ns.n_layers,
                               "n_positions": data_cfg.max_len}
                    resolve_config(ns.model, ns.preset, **options)
                load_tokenizer(data_cfg.tokenizer)
                load = lambda: load_snli_splits(data_dir, data_cfg, cache)  # noqa: E731
            key = (run.task, json.dumps(asdict(data_cfg), sort_keys=True))
            if key not in sizes:
                splits = load()  # tokenised once here, so the runs find the cache
                sizes[key] = (len(splits["train"]), len(splits["validation"]))
        except (ValueError, DataUnavailableError) as e:
            raise PreflightError(f"{run.name}: {e}") from None
        n_train, n_val = sizes[key]
        per_epoch = n_train // batch
        if train_cfg.max_steps_per_epoch:
            per_epoch = min(per_epoch, train_cfg.max_steps_per_epoch)
        if per_epoch == 0 and mode != "eval":
            raise PreflightError(f"{run.name}: the {run.task} training split has fewer than batch_size={batch} items")
        val = -(-n_val // (train_cfg.eval_batch_size or batch))
        run.epochs, run.steps = epochs, epochs * per_epoch
        run.val_batches = min(val, train_cfg.eval_max_batches) if train_cfg.eval_max_batches else val
    if knobs.resume and mode != "eval":
        for run in runs:
            last = newest(knobs.out_root, run.name, "last.pt")
            config = last.parent / "config.json" if last else None
            if config and config.is_file():
                summary = json.loads(config.read_text()).get("summary", {})
                differ = [f"{k} (checkpoint {summary.get(k)!r}, now {v!r})" for k, v in run.expect.items()
                          if summary.get(k) != v]
                if differ:
                    raise PreflightError(f"RESUME=1: {last} is from another configuration: " + "; ".join(differ))


def _check_backbone(distilbert_dir: str | None) -> None:
    """SNLI_MODE=distilbert needs the DistilBERT weights: DISTILBERT_DIR, the HF cache or the hub."""
    from .models.snli_heads import DEFAULT_BACKBONE, BackboneUnavailableError, load_backbone

    try:
        load_backbone(distilbert_dir or DEFAULT_BACKBONE)
    except BackboneUnavailableError:
        where = f"DISTILBERT_DIR={distilbert_dir} holds no usable copy" if distilbert_dir else \
            f"{DEFAULT_BACKBONE} is neither in the Hugging Face cache nor downloadable here"
        raise PreflightError(f"the DistilBERT weights that SNLI_MODE=distilbert needs are unavailable ({where}): "
                             "set DISTILBERT_DIR to a local copy, or SNLI_MODE=scratch for the from-scratch "
                             "encoders") from None


# --------------------------------------------------------------------------- estimates


def measure_step(run: Run, device: Any) -> float:
    """Seconds of one training step (forward, backward, AdamW) of `run`'s model, eager,
    on random inputs: the second of two steps, so allocation is not counted."""
    import torch

    from .models import build_classifier, build_model
    from .training import autocast

    ns = _parse(run)
    options = {**dict(parse_option(o) for o in ns.opt), "n_layers": ns.n_layers}
    if ns.mixer_impl:
        options["mixer_impl"] = ns.mixer_impl
    torch.manual_seed(0)
    if run.task == "wikitext":
        from .runs import paper_batch_size

        L = ns.seq_len or 128
        B = ns.batch_size or paper_batch_size(L)
        model = build_model(ns.model, ns.preset, n_positions=L, **options).to(device)
        ids = torch.randint(0, model.cfg.vocab_size, (B, L + 1), device=device)
        loss_of = lambda: torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1).float(),  # noqa: E731
                                                           ids[:, 1:].flatten())
    else:
        B, L = ns.batch_size or 32, 128
        model = build_classifier(ns.model, ns.preset, n_positions=L, **options).to(device)
        ids = torch.randint(0, model.cfg.vocab_size, (B, L), device=device)
        mask, labels = torch.ones_like(ids), torch.randint(0, 3, (B,), device=device)
        loss_of = lambda: torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds = 0.0
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, "auto"):
            loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    del model, opt
    return seconds


def estimate(runs: list[Run], keep_going: Callable[[], bool] = lambda: True) -> dict[str, float | None]:
    """Run name -> estimated seconds: one measured step x (training steps + validation batches / 3,
    a forward pass being about a third of a step). Compilation and start-up are not included;
    DistilBERT heads (feature cache first) are not estimated, nor shapes left when
    `keep_going()` turns false (the time set aside for estimating is over)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step_s: dict[tuple, float] = {}
    out: dict[str, float | None] = {}
    for run in runs:
        if run.snli_mode == "distilbert" or (run.cost_key not in step_s and not keep_going()):
            out[run.name] = None
            continue
        if run.cost_key not in step_s:
            step_s[run.cost_key] = measure_step(run, device)
        out[run.name] = step_s[run.cost_key] * (run.steps + run.epochs * run.val_batches / 3)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- slots


def _gpu_free_gib() -> list[float]:
    """Free memory of each visible GPU (nvidia-smi; the device total when it is absent)."""
    import torch

    n = torch.cuda.device_count()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        free = [float(x) / 1024 for x in out]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            free = [free[int(i)] for i in visible.split(",") if i.strip().isdigit() and int(i) < len(free)]
        if len(free) == n:
            return free
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(n)]


def plan_slots(knobs: Knobs) -> tuple[list[str | None], str]:
    """The queue's slots (CUDA_VISIBLE_DEVICES of each, None on the CPU) and a line saying why.

    The GPUs are split into groups of NPROC (one torchrun job each); each group runs
    RUNS_PER_GPU jobs at once. Automatic RUNS_PER_GPU on GPUs: min(free GiB / GPU_GIB_PER_RUN,
    CPU cores per GPU / CORES_PER_RUN, MAX_RUNS_PER_GPU); 1 on the CPU.
    """
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if knobs.parallel_runs:
        if n_gpus and knobs.parallel_runs > n_gpus:
            raise PreflightError(f"PARALLEL_RUNS={knobs.parallel_runs} but only {n_gpus} GPU(s) are visible")
        n_gpus, per_gpu = (knobs.parallel_runs if n_gpus else 0), 1
    if n_gpus == 0:
        k = knobs.runs_per_gpu or (knobs.parallel_runs or 1)
        return [None] * k, f"RUNS_PER_GPU={k} on the CPU" + ("" if knobs.runs_per_gpu else " (default)")
    if n_gpus < knobs.nproc:
        raise PreflightError(f"NPROC={knobs.nproc} but only {n_gpus} GPU(s) are visible")
    groups = [",".join(str(g) for g in range(s, s + knobs.nproc)) for s in range(0, n_gpus - knobs.nproc + 1, knobs.nproc)]
    if knobs.parallel_runs:
        why = f"PARALLEL_RUNS={knobs.parallel_runs}: one run on each of {n_gpus} GPU(s)"
    elif knobs.runs_per_gpu:
        per_gpu, why = knobs.runs_per_gpu, f"RUNS_PER_GPU={knobs.runs_per_gpu} (set)"
    else:
        free = min(_gpu_free_gib()[:n_gpus])
        cores = os.cpu_count() or 1
        per_gpu = max(1, min(int(free // GPU_GIB_PER_RUN), cores // n_gpus // CORES_PER_RUN, MAX_RUNS_PER_GPU))
        why = (f"RUNS_PER_GPU={per_gpu} (auto: {free:.0f} GiB free per GPU / {GPU_GIB_PER_RUN} GiB per run, "
               f"{cores} CPU cores for {n_gpus} GPU(s) / {CORES_PER_RUN} per run, at most {MAX_RUNS_PER_GPU})")
    slots: list[str | None] = [g for _ in range(per_gpu) for g in groups]
    return slots, f"{why}; {len(groups)} group(s) of {knobs.nproc} GPU(s): {len(slots)} run(s) at once"


# --------------------------------------------------------------------------- the queue


@dataclass
class Outcome:
    """What became of one run; queue.json holds one per run."""

    name: str
    stage: str
    status: str  # completed | failed | cut | not started | eval failed
    out_dir: str | None = None
    train_s: float | None = None
    eval_s: float | None = None
    estimate_s: float | None = None
    started: float | None = None  # Unix time the training (or, in eval mode, the evaluation) started
    note: str = ""


class Queue:
    """Keeps one job per slot busy, in the runs' order; train, then the run's evaluation.

    stop_when: polled every half second; when it turns true (or the deadline passes, or the
    process gets SIGINT/SIGTERM) no run starts any more and the running ones get SIGTERM,
    which makes each save last.pt and mark its results.json "interrupted" before it exits.
    """

    def __init__(self, knobs: Knobs, slots: list[str | None], mode: str, stamp_dir: Path, python: str,
                 deadline: float | None = None, stop_when: Callable[[], bool] | None = None) -> None:
        self.knobs, self.slots, self.mode, self.stamp_dir = knobs, slots, mode, stamp_dir
        self.python, self.deadline, self.stop_when = python, deadline, stop_when
        self.echo = len(slots) == 1  # one run at a time: its output also goes to the terminal
        self.stop_reason: str | None = None
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._compiling: set[tuple[str, ...]] = set()  # shapes a run has started on (GPU slots)
        self._warm: set[tuple[str, ...]] = set()  # shapes whose first run has logged a step
        self._env = self._child_env()

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        cache = default_cache_dir()
        # One compilation cache for every process: only the first run of a shape compiles fully.
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
        env.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(self.slots))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
        return env

    def launch(self) -> list[str]:
        if self.knobs.nproc > 1:
            return [self.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.knobs.nproc}", "-m"]
        return [self.python, "-m"]

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
                print(f"stopping: {reason}; each running run saves last.pt", flush=True)
            for proc in self._procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _execute(self, cmd: list[str], log: Path, slot: str | None,
                 on_line: Callable[[str], None] = lambda line: None) -> int | None:
        """Run `cmd` into `log` (and the terminal with one slot); its exit code, or None when
        the queue was stopped before it could start."""
        env = dict(self._env)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        with self._lock:
            if self.stop_reason:
                return None
            log.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                    start_new_session=True)  # signals reach it from the queue only
            self._procs.add(proc)
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            for line in proc.stdout:  # type: ignore[union-attr]
                on_line(line)
                f.write(line)
                f.flush()
                if self.echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        rc = proc.wait()
        with self._lock:
            self._procs.discard(proc)
        return rc

    def _job(self, run: Run, slot: str | None, estimate_s: float | None) -> Outcome:
        out = Outcome(run.name, run.stage, "completed", estimate_s=estimate_s, started=time.time())
        where = f" on GPU {slot}" if slot is not None else ""
        if self.mode == "eval":
            ckpt = newest(self.knobs.out_root, run.name, "best.pt")
            if ckpt is None:
                print(f"error: no {self.knobs.out_root}/*/{run.name}/best.pt to evaluate "
                      "(train it first: mode train or both)", file=sys.stderr, flush=True)
                out.status, out.note = "eval failed", "no best.pt"
                return out
            print(f"evaluating the newest checkpoint of {run.name}: {ckpt}", flush=True)
            run_dir = ckpt.parent
        else:
            run_dir, resume = self.stamp_dir / run.name, []
            last = newest(self.knobs.out_root, run.name, "last.pt") if self.knobs.resume else None
            if last is not None:
                run_dir, resume = last.parent, ["--resume"]
            cmd = [*self.launch(), run.train_module, *run.args, "--out-dir", str(run_dir), *resume]
            print(f"=== train {run.name}{where}{' (resuming ' + str(last) + ')' if last else ''}, "
                  f"log {run_dir / 'train.log'}", flush=True)
            t0 = time.perf_counter()
            # its first logged step ends the compilation the runs of its shape wait for
            rc = self._execute(cmd, run_dir / "train.log", slot,
                               lambda line: self._warm.add(run.compile_key) if line.startswith("step ") else None)
            self._warm.add(run.compile_key)
            if rc is None:
                return Outcome(run.name, run.stage, "not started", estimate_s=estimate_s)
            out.train_s = time.perf_counter() - t0
            out.out_dir = str(run_dir)
            if rc != 0:
                if self.stop_reason:
                    out.status, out.note = "cut", self.stop_reason
                    _mark_cut(run, run_dir, self.stop_reason)
                else:
                    out.status, out.note = "failed", f"training exited with {rc}; see {run_dir / 'train.log'}"
                    print(f"!!! train {run.name} failed (exit {rc}); log {run_dir / 'train.log'}", file=sys.stderr,
                          flush=True)
                return out
            print(f"--- trained {run.name} in {out.train_s:.1f} s", flush=True)
            if self.mode == "train":
                return out
        out.out_dir = str(run_dir)
        data = ["--data-dir", self.knobs.data_dir] if self.knobs.data_dir else []
        quick = ["--max-batches", "2"] if self.knobs.quick else []
        expect = [x for k, v in run.expect.items() for x in ("--expect", f"{k}={v}")]
        cmd = [self.python, "-m", run.eval_module, str(run_dir), *expect, *data, *quick]
        t0 = time.perf_counter()
        rc = self._execute(cmd, run_dir / "eval.log", slot)
        out.eval_s = time.perf_counter() - t0
        if rc != 0:
            out.status = "cut" if self.stop_reason else "eval failed"
            out.note = self.stop_reason or f"evaluation exited with {rc}; see {run_dir / 'eval.log'}"
            if not self.stop_reason:
                print(f"!!! eval {run.name} failed (exit {rc}); log {run_dir / 'eval.log'}", file=sys.stderr, flush=True)
        return out

    def _next(self, todo: collections.deque, slot: str | None) -> Run | None:
        """The first run in priority order that may start now (under the lock).

        On GPUs, runs start compiled: a run whose shape is being compiled by another run
        waits until that one has logged a step, so that it finds the shape in the shared
        compilation cache instead of compiling it again at the same time.
        """
        for run in todo:
            if slot is None or self.mode == "eval" or run.compile_key in self._warm \
                    or run.compile_key not in self._compiling:
                todo.remove(run)
                if slot is not None:
                    self._compiling.add(run.compile_key)
                return run
        return None

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM stop the queue (and its runs, cleanly) instead of the process."""
        handlers = {s: signal.signal(s, lambda signum, _: self.stop(f"received {signal.Signals(signum).name}"))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def run(self, runs: list[Run], estimates: dict[str, float | None] | None = None) -> list[Outcome]:
        """Run everything (or until stopped); one Outcome per run, in the runs' order."""
        estimates = estimates or {}
        todo = collections.deque(runs)
        done: dict[str, Outcome] = {}

        def worker(slot: str | None) -> None:
            while True:
                with self._lock:
                    if self.stop_reason or not todo:
                        return
                    run = self._next(todo, slot)
                if run is None:  # only runs whose shape is still compiling elsewhere are left
                    time.sleep(0.5)
                    continue
                try:
                    done[run.name] = self._job(run, slot, estimates.get(run.name))
                except Exception as e:  # one broken run must not take the queue down
                    done[run.name] = Outcome(run.name, run.stage, "failed", note=f"{type(e).__name__}: {e}")
                    print(f"!!! {run.name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

        threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in self.slots]
        with self.signals():
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                if self.deadline is not None and time.time() >= self.deadline:
                    self.stop("the time budget ran out")
                elif self.stop_when is not None and self.stop_when():
                    self.stop("asked to stop")
                for t in threads:
                    t.join(timeout=0.5 / len(threads))
        return [done.get(r.name) or Outcome(r.name, r.stage, "not started", estimate_s=estimates.get(r.name))
                for r in runs]


def _mark_cut(run: Run, run_dir: Path, reason: str) -> None:
    """A run stopped before it wrote results.json (before its first step) gets one saying so,
    so every unfinished run is marked; a run stopped later already wrote "interrupted"."""
    path = run_dir / "results.json"
    if path.is_file():
        return
    from .data.sources import atomic_write

    record = {"run_name": run.name, "task": run.task, **run.expect, "status": "interrupted",
              "stop_reason": f"{reason} before the first checkpoint", "epochs": [], "test": None}
    atomic_write(path, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))


# --------------------------------------------------------------------------- summary


def _fmt_s(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def run_rows(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run: the queue's record plus step time, tokens/s and the metric from its files."""
    rows = []
    for o in outcomes:
        row = dict(o)
        run_dir = Path(o["out_dir"]) if o.get("out_dir") else None
        results = run_dir / "results.json" if run_dir else None
        if results and results.is_file():
            r = json.loads(results.read_text())
            # the logged windows' ms/step (each process's first step, compilation included,
            # is left out of them, as of train_time_s)
            windows = []
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file():
                records = (json.loads(line) for line in metrics.read_text().splitlines())
                windows = [rec["step_ms"] for rec in records if rec.get("kind") == "step" and rec.get("step_ms")]
            row.update(run_status=r.get("status"), corpus=r.get("corpus"), epochs_run=len(r.get("epochs") or []),
                       step_ms=statistics.median(windows) if windows else None,
                       tokens_per_s=r.get("tokens_per_s"),
                       best_val=r.get("best_val_ppl", r.get("best_val_acc")),
                       test=(r.get("test") or {}).get("ppl", (r.get("test") or {}).get("acc")))
        rows.append(row)
    return rows


def write_summary(out_dir: Path) -> Path:
    """<out_dir>/SUMMARY.md from queue.json (and steps.tsv of the GPU window, when present)."""
    queue = json.loads((out_dir / "queue.json").read_text())
    rows = run_rows(queue["runs"])
    lines = [f"# Summary of {out_dir.name}", ""]
    corpora = sorted({r["corpus"] for r in rows if r.get("corpus")})
    if corpora:
        lines.append(f"- corpus: {', '.join(corpora)}" + (
            " (reduced-corpus results are not comparable with the paper's tables)" if "reduced" in corpora else ""))
    lines += [f"- {queue['slots']}", f"- wall-clock of the queue: {queue['wall_s']:.0f} s"
              + (f"; stopped: {queue['stop_reason']}" if queue.get("stop_reason") else "")]
    steps = out_dir / "steps.tsv"
    if steps.is_file():
        lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---:|"]
        for line in steps.read_text().splitlines():
            name, status, seconds = line.split("\t")
            lines.append(f"| {name} | {status} | {float(seconds):.0f} |")
    lines += ["", "## Runs", "",
              "| run | stage | status | estimate s | train s | eval s | ms/step | tokens/s | epochs | best val | test |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        status = r["status"] + (f" ({r['note']})" if r.get("note") and r["status"] != "completed" else "")
        lines.append("| " + " | ".join([
            r["name"], r["stage"], status, _fmt_s(r.get("estimate_s")), _fmt_s(r.get("train_s")),
            _fmt_s(r.get("eval_s")), _fmt_s(r.get("step_ms")),
            "—" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}",
            str(r.get("epochs_run", "—")), "—" if r.get("best_val") is None else f"{r['best_val']:.4g}",
            "—" if r.get("test") is None else f"{r['test']:.4g}"]) + " |")
    cut = [r["name"] for r in rows if r["status"] in ("cut", "not started")]
    lines += ["", f"Cut or not started ({len(cut)}): " + (", ".join(cut) if cut else "none")
              + ("; continue them with RESUME=1." if cut else ""), ""]
    path = out_dir / "SUMMARY.md"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grassmann_flows.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="plan, check and run a grid")
    r.add_argument("model", nargs="?", choices=("grassmann", "transformer", "all"))
    r.add_argument("dataset", nargs="?", choices=("wikitext", "snli", "all"))
    r.add_argument("mode", nargs="?", default="both", choices=MODES)
    r.add_argument("--window", action="store_true",
                   help="the GPU window's prioritised grid (stages from WINDOW_STAGES) instead of MODEL DATASET")
    r.add_argument("--estimate", action="store_true", help="measure one step per model shape and print estimates")
    r.add_argument("--budget-s", type=float, default=None, help="stop the queue (cleanly) after this many seconds")
    r.add_argument("--out-dir", default=None, help="directory of this grid's runs (default OUT_ROOT/<timestamp>)")
    r.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    s = sub.add_parser("summary", help="write SUMMARY.md of a queue's output directory")
    s.add_argument("out_dir", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "summary":
        print(f"wrote {write_summary(args.out_dir)}")
        return 0
    try:
        knobs = Knobs.from_env(dict(os.environ))
        if args.window:
            stages = (os.environ.get("WINDOW_STAGES") or ",".join(WINDOW_STAGES)).split(",")
            runs = Planner(knobs).window(stages)
        else:
            if not args.model or not args.dataset:
                raise PreflightError(f"give a model and a dataset: {USAGE}")
            models = ["transformer", "grassmann"] if args.model == "all" else [args.model]
            runs = Planner(knobs).speedrun(models, ["wikitext", "snli"] if args.dataset == "all" else [args.dataset])
        slots, why = plan_slots(knobs)
        t0 = time.time()
        preflight(runs, knobs, args.mode)
    except PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp_dir = Path(args.out_dir) if args.out_dir else knobs.out_root / time.strftime("%Y-%m-%d_%H-%M-%S")
    print(f"grid: {len(runs)} run(s), mode {args.mode}; {why}; checks passed in {time.time() - t0:.1f} s", flush=True)
    deadline = t0 + args.budget_s if args.budget_s is not None else None
    queue = Queue(knobs, slots, args.mode, stamp_dir, args.python, deadline=deadline)
    estimates: dict[str, float | None] = {}
    if args.estimate:  # at most a fifth of the budget
        until = t0 + args.budget_s / 5 if args.budget_s is not None else float("inf")
        with queue.signals():
            estimates = estimate(runs, lambda: queue.stop_reason is None and time.time() < until)
    for i, run in enumerate(runs, 1):
        est = estimates.get(run.name)
        print(f"  {i:3d}. [{run.stage}] {run.name}: {run.steps} steps"
              + (f", about {_fmt_s(est)} s" if est is not None else ", not estimated" if estimates else ""),
              flush=True)
    if estimates:
        known = [v for v in estimates.values() if v is not None]
        print(f"  estimate: {sum(known):.0f} s of steps in all, about {sum(known) / len(slots):.0f} s over "
              f"{len(slots)} slot(s) (one measured eager step per shape; compilation and start-up not included)",
              flush=True)
    t0 = time.time()
    outcomes = queue.run(runs, estimates)
    wall = time.time() - t0
    if stamp_dir.is_dir() or args.out_dir:
        stamp_dir.mkdir(parents=True, exist_ok=True)
        record = {"slots": why, "mode": args.mode, "wall_s": wall, "stop_reason": queue.stop_reason,
                  "runs": [asdict(o) for o in outcomes]}
        (stamp_dir / "queue.json").write_text(json.dumps(record, indent=2) + "\n")
    failed = [o for o in outcomes if o.status in ("failed", "eval failed")]
    cut = [o for o in outcomes if o.status in ("cut", "not started")]
    if cut:
        print(f"grid: {len(cut)} run(s) cut or not started ({queue.stop_reason}): "
              + ", ".join(f"{o.name} ({o.status})" for o in cut), file=sys.stderr)
    if failed:
        print(f"speedrun: {len(failed)} step(s) failed: " + ", ".join(f"{o.name} ({o.note})" for o in failed),
              file=sys.stderr)
        return 1
    if queue.stop_reason and queue.stop_reason.startswith("received"):
        return 130
    print(f"speedrun: done in {wall:.0f} s; outputs under {stamp_dir} "
          f"(summary: python scripts/analyze_best_results.py {stamp_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
