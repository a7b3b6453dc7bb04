"""The training loop shared by WikiText-2 LM and SNLI: one `fit`, two `Task`s.

A `Task` knows how to turn a batch into a loss and how to evaluate a split; `fit`
owns everything else: optimizer and schedule, precision, compilation, progress,
metrics, checkpoints, resuming, interruption, divergence and multi-GPU data parallelism.

Under torchrun (WORLD_SIZE > 1) every rank trains a DistributedDataParallel copy on its
equal slice of each global batch; rank 0 alone evaluates and writes the run directory.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .data.sources import atomic_write
from .utils import distributed
from .utils.checkpoint import (CheckpointError, config_mismatch, load_checkpoint, rng_state, save_checkpoint,
                               set_rng_state)
from .utils.env import environment, save_git_diff

# How the user continues a stopped run, when not with this module's --resume: the grid's
# queue sets it to its knob (RESUME=1) in the environment of the runs it starts.
RESUME_HINT_ENV = "GRASSMANN_FLOWS_RESUME_HINT"


HEAD_LOSSES = ("auto", "logits", "chunked")


@dataclass
class TrainConfig:
    """Optimisation and run settings (the paper specifies only epochs and batch sizes)."""

    epochs: int = 30
    batch_size: int = 32  # global: split evenly across the ranks of a torchrun job
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine floor = lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01  # on >= 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32; runs store it resolved
    compile: str = "auto"  # auto (on for CUDA) | on | off
    compile_mode: str = "default"  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
    max_steps_per_epoch: int = 0  # 0 = the whole split; QUICK runs cap it
    eval_max_batches: int = 0  # 0 = the whole split
    eval_batch_size: int = 0  # 0 = batch_size
    log_every: int = 50
    stop_after_steps: int = 0  # save last.pt and stop after this many steps (0 = never)
    patience: int = 0  # stop after this many evaluations without a validation improvement (0 = off)
    # WikiText-2 only: how the tied head's cross-entropy is computed. "logits" materialises the
    # (B, L, V) logits; "chunked" never does (ops/linear_cross_entropy, same loss and gradients);
    # "auto" is chunked on the CPU, where the logits' memory traffic dominates a step, and
    # logits on CUDA, where torch.compile fuses the head and the loss.
    head_loss: str = "auto"  # one of HEAD_LOSSES


class Task(Protocol):
    """What `fit` needs to know about a dataset."""

    name: str
    metric: str  # the validation metric that picks best.pt, e.g. "loss" or "acc"
    higher_is_better: bool

    def n_train(self) -> int: ...

    def train_batch(self, indices: torch.Tensor, device: torch.device) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int | torch.Tensor]:
        """Mean loss of the batch and the number of input tokens it holds (for tokens/s;
        a tensor is read on the host only when losses are, every log_every steps)."""
        ...

    def evaluate(
        self, model: nn.Module, split: str, device: torch.device, batch_size: int, max_batches: int,
        precision: str,
    ) -> dict[str, Any]:
        """Metrics of a split, under the run's `precision` (see `autocast`): at least "loss"
        and the task's `metric`."""
        ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32": "auto" is bf16 on CUDA and fp32 elsewhere.

    A run stores the resolved value, so that its evaluation on any device computes in
    the precision it trained in.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast when `precision` resolves to bf16 on `device` (see `resolve_precision`)."""
    use_bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D weights only (not on biases, LayerNorms)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """One line: how many parameter tensors and elements each group holds, and its weight decay."""
    groups = [f"{len(g['params'])} tensors ({sum(p.numel() for p in g['params']):,} parameters) at weight decay "
              f"{g['weight_decay']}" for g in optimizer.param_groups]
    return f"optimizer {type(optimizer).__name__}: " + ", ".join(groups)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr * min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled item order of one epoch: a function of (seed, epoch) only, so a
    resumed run sees exactly the batches the uninterrupted run would."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks at step and epoch boundaries."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Whether any rank has received a signal. Ranks may see one a step apart; asking
        all of them makes them stop (and checkpoint) at the same step."""
        return distributed.any_rank(self.signal is not None)

    def reason(self) -> str:
        return f"received {self.signal or 'a signal on another rank'}"

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Log:
    """metrics.jsonl writer plus human progress: tqdm on a terminal, plain lines otherwise.

    Silent when not `enabled` (ranks other than 0), so one run logs once.
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tty = sys.stdout.isatty()

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        # Off a terminal tqdm is disabled and `fit` prints plain lines every log_every steps.
        return tqdm(total=total, initial=initial, desc=desc, disable=not (self.tty and self.enabled),
                    dynamic_ncols=True, leave=False)

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device` without making the host wait for the copy.

    On CUDA the tensor is pinned first: a copy from pageable memory is synchronous
    whatever `non_blocking` says.
    """
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def gather_batch(ds: Any, idx: list[int], device: torch.device) -> Any:
    """Stack items `idx` of a dataset whose items are tuples or dicts of tensors."""
    items = [ds[i] for i in idx]
    if isinstance(items[0], dict):
        return {k: to_device(torch.stack([it[k] for it in items]), device) for k in items[0]}
    return tuple(to_device(torch.stack(col), device) for col in zip(*items))


def eval_batches(ds: Any, batch_size: int, max_batches: int, device: torch.device,
                 fetch: Callable[[Any, list[int], torch.device], Any] = gather_batch) -> Iterator[Any]:
    """The split in order, in batches (the last one short), at most `max_batches` (0 = all)."""
    n_batches = math.ceil(len(ds) / batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        yield fetch(ds, list(range(b * batch_size, min(len(ds), (b + 1) * batch_size))), device)


def exit_code(results: dict[str, Any]) -> int:
    """0 when completed or stopped on request, 130 when stopped by a signal, 3 when diverged."""
    if results["status"] == "diverged":
        return 3
    if results["status"] == "interrupted" and (results["stop_reason"] or "").startswith("received"):
        return 130
    return 0


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint must hold to continue it exactly.

    Saved with `asdict` as the "state" of every checkpoint's metadata; --resume loads it back.
    """

    epoch: int = 0  # the epoch in progress (0-based); at an epoch's end, the epochs finished
    step_in_epoch: int = 0  # steps of that epoch already taken
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per evaluated epoch
    best: float | None = None  # the best validation value of the task's metric so far
    best_epoch: int | None = None  # 1-based
    train_time_s: float = 0.0  # training wall-clock: no evaluation, no process's first step
    train_tokens: int = 0  # input tokens of the steps that train_time_s times, over all ranks
    first_step_s: float = 0.0  # each process's first step (torch.compile compiles there), summed
    epoch_loss_sum: float = 0.0  # the epoch's training losses read on the host so far
    epoch_loss_n: int = 0

    def evals_since_best(self) -> int:
        """Evaluations (one per epoch) since the best validation score."""
        return len(self.history) - (self.best_epoch or 0)


@dataclass
class _Loop:
    """What the step loop needs besides the state: built once per process by `fit`, never saved."""

    model: nn.Module  # the plain model: clipped, evaluated and checkpointed
    train_model: nn.Module  # what the steps run: `model`, wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    task: Task
    cfg: TrainConfig
    device: torch.device
    log: Log
    steps_per_epoch: int
    total_steps: int
    first_step: int | None = None  # global step of this process's first step, timed apart


class _StepTimer:
    """Wall-clock of an epoch's steps, read between steps.

    On CUDA every reading synchronises first, so that the steps queued so far are inside it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.mark = self._now()
        self.steps = 0  # steps taken since `mark`
        self.excluded = 0.0  # seconds of steps left out of `total` and step times

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def exclude(self) -> float:
        """Leave the time since the mark out (a first step), and return it."""
        now = self._now()
        seconds, self.mark, self.steps = now - self.mark, now, 0
        self.excluded += seconds
        return seconds

    def window_ms(self) -> float | None:
        """Mean milliseconds per step since the mark (None without a step), and a new mark."""
        now = self._now()
        ms = 1e3 * (now - self.mark) / self.steps if self.steps else None
        self.mark, self.steps = now, 0
        return ms

    def total(self) -> float:
        """Seconds since the epoch began, less the excluded steps."""
        return self._now() - self.start - self.excluded


# Set (to 1) by a parent that already keeps the run's output in <run dir>/train.log.
OUTPUT_LOGGED_ENV = "GRASSMANN_FLOWS_OUTPUT_LOGGED"


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    run_dir: Path,
    run_info: dict[str, Any],
    resume: bool = False,
) -> dict[str, Any]:
    """Train `model` on `task`, evaluating each epoch; returns (and writes) results.json.

    run_info: what identifies the run (config dicts, names); it is saved in
    config.json and in every checkpoint's metadata and checked on --resume.
    Writes into run_dir: config.json, metrics.jsonl, best.pt, last.pt, results.json, and
    git.diff when the checkout has uncommitted edits. The traceback of an unexpected
    error (one `runs.error_line` does not make one line of) is also appended to train.log,
    unless OUTPUT_LOGGED_ENV says the whole output goes there; a refusal leaves run_dir as it was.
    """
    from .runs import error_line

    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _fit(model, task, cfg, run_dir, run_info, resume)
    except Exception as e:
        if error_line(e) is None and os.environ.get(OUTPUT_LOGGED_ENV) != "1":
            with open(run_dir / "train.log", "a") as f:
                f.write(f"rank {distributed.rank()}: " + traceback.format_exc())
        raise


def _fit(model: nn.Module, task: Task, cfg: TrainConfig, run_dir: Path, run_info: dict[str, Any],
         resume: bool) -> dict[str, Any]:
    device = distributed.init(resolve_device(cfg.device))
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    world, rank = distributed.world_size(), distributed.rank()
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                         f"{world} processes, which each take an equal slice of it")
    # The model was built from cfg.seed on every rank (and DDP broadcasts rank 0's weights);
    # this seed drives dropout, whose masks should differ between the ranks' slices.
    torch.manual_seed(cfg.seed + rank)
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    steps_per_epoch = task.n_train() // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"the {task.name} training split has fewer than batch_size={cfg.batch_size} items")
    identity = {**run_info, "train": asdict(cfg)}
    log = Log(run_dir, enabled=distributed.is_rank0())
    log.line(describe_optimizer(optimizer))

    state = TrainState()
    if resume:
        state = _resume(run_dir / "last.pt", model, optimizer, identity, device)
        log.line(f"resumed from {run_dir / 'last.pt'} at epoch {state.epoch + 1}, step {state.global_step}")
    elif log.enabled:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    env = environment(device)
    if log.enabled:
        (run_dir / "config.json").write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
        save_git_diff(run_dir / "git.diff", env["git_dirty"])

    # DDP averages the gradients across ranks during backward. `model` itself is what is
    # evaluated and checkpointed, so state_dict keys never get DDP's "module." prefix.
    train_model: nn.Module = model
    if world > 1:
        # No buffer broadcast: the models' buffers are constants (the antisymmetrizers, 11.6 MiB
        # at N=6), identical on every rank from construction; nothing trains them.
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                              broadcast_buffers=False)
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    if use_compile:
        train_model = torch.compile(train_model, mode=cfg.compile_mode)
    loop = _Loop(model, train_model, optimizer, task, cfg, device, log, steps_per_epoch,
                 total_steps=cfg.epochs * steps_per_epoch)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def checkpoint(name: str) -> None:
        # Called by every rank at the same point: each rank's RNG state goes into the file,
        # so a resumed run continues every rank's dropout stream exactly.
        rngs = distributed.gather_objects(rng_state(device))
        if distributed.is_rank0():
            save_checkpoint(run_dir / name, model, {**identity, "state": asdict(state)}, optimizer, rngs)

    status, stop_reason, stopped_early = "completed", None, False
    with StopRequest() as stop:
        for epoch in range(state.epoch, cfg.epochs):
            # Checked before the epoch rather than after the evaluation, so that resuming a
            # run that stopped early stops again instead of training on.
            if cfg.patience and state.evals_since_best() >= cfg.patience:
                stopped_early = True
                stop_reason = f"patience={cfg.patience}: no validation improvement since epoch {state.best_epoch}"
                log.line(f"stopped early: {stop_reason}")
                break
            state.epoch = epoch
            ended = _train_epoch(loop, state, epoch, stop)
            if ended:
                status, stop_reason = ended
                break
            # Rank 0 evaluates while the others wait; all record its metrics and so keep
            # the same state (best epoch, history) and reach the same checkpoint calls.
            metrics = (task.evaluate(model, "validation", device, eval_bs, cfg.eval_max_batches, cfg.precision)
                       if distributed.is_rank0() else None)
            metrics = distributed.broadcast_object(metrics)
            if not math.isfinite(metrics["loss"]):
                # Finite training losses can still end in non-finite weights (an inf gradient
                # through clipping): they must not overwrite the last good last.pt.
                status = "diverged"
                stop_reason = f"non-finite validation loss ({metrics['loss']}) after step {state.global_step}"
                break
            train_loss = state.epoch_loss_sum / max(1, state.epoch_loss_n)
            _record_epoch(state, epoch, train_loss, metrics, task, log)
            if state.best_epoch == epoch + 1:
                checkpoint("best.pt")
            state.epoch, state.step_in_epoch, state.epoch_loss_sum, state.epoch_loss_n = epoch + 1, 0, 0.0, 0
            if stop.agreed():  # a signal during the evaluation: stop at this epoch's end
                status, stop_reason = "interrupted", stop.reason()
                break
            checkpoint("last.pt")
        if status == "interrupted":
            checkpoint("last.pt")
            log.line(f"stopped: {stop_reason}; saved {run_dir / 'last.pt'} "
                     f"(continue with {os.environ.get(RESUME_HINT_ENV) or '--resume'})")
        elif status == "diverged":
            log.line(f"DIVERGED: {stop_reason}; the last good checkpoints are kept, results.json records the failure")

    test = None
    if status == "completed" and distributed.is_rank0() and (run_dir / "best.pt").is_file():
        # To the CPU, then copied into the parameters: no second copy of weights and optimizer
        # state on a GPU that still holds the training optimizer (and may be shared).
        model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        test = task.evaluate(model, "test", device, eval_bs, cfg.eval_max_batches, cfg.precision)
        log.write({"kind": "eval", "epoch": state.best_epoch, "split": "test", **_scalars(test)})
        log.line(f"EVAL split=test best_epoch={state.best_epoch} " + _fmt(test))
    results = _results(state, run_info, test, status=status, stop_reason=stop_reason, stopped_early=stopped_early,
                       device=device, model=model, env=env)
    if distributed.is_rank0():
        atomic_write(run_dir / "results.json", lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    # The others wait for rank 0's writes: torchrun stops the whole job as soon as one
    # worker exits with a non-zero code (130 when interrupted, 3 when diverged).
    distributed.barrier()
    distributed.cleanup()
    return results


def _train_epoch(loop: _Loop, state: TrainState, epoch: int, stop: StopRequest) -> tuple[str, str] | None:
    """Take the steps of `epoch` from `state.step_in_epoch` on, updating `state`.

    Returns (status, stop_reason) when the epoch ends before its last step: "interrupted"
    (a signal, or stop_after_steps) or "diverged" (a non-finite training loss); else None.
    """
    cfg, world, rank = loop.cfg, distributed.world_size(), distributed.rank()
    order = epoch_order(loop.task.n_train(), cfg.seed, epoch)
    loop.model.train()
    bar = loop.log.bar(loop.steps_per_epoch, state.step_in_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
    timer = _StepTimer(loop.device)
    # (step, loss, tokens) not yet read on the host
    pending: list[tuple[int, torch.Tensor, int | torch.Tensor]] = []
    ended = None
    for b in range(state.step_in_epoch, loop.steps_per_epoch):
        step = state.global_step
        lr = lr_at(step, loop.total_steps, cfg)
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        # This rank's equal slice of the global batch; together the slices are the
        # single-process batch. DDP's gradient average is then the gradient of the
        # global mean loss, as every slice holds as many loss terms (one per SNLI
        # pair; seq_len, or seq_len - 1 with l_shift, targets per LM block).
        rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].view(world, -1)[rank]
        batch = loop.task.train_batch(rows, loop.device)
        with autocast(loop.device, cfg.precision):
            loss, n_items = loop.task.loss(loop.train_model, batch)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
        loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.step_in_epoch = b + 1
        pending.append((step, loss.detach(), n_items))
        bar.update(1)
        if loop.first_step is None:
            # This process's first step also compiles (torch.compile) and warms up the
            # allocator and kernels: timed apart, so that step times and tokens/s exclude it.
            loop.first_step = step
            seconds = timer.exclude()
            state.first_step_s += seconds
            loop.log.line(f"first step (compilation included): {seconds:.2f} s")
        else:
            timer.steps += 1
        # The ranks agree on a signal only where a flush happens anyway (a collective each
        # step would cost a host round trip); one process checks its own flag every step.
        at_limit = bool(cfg.stop_after_steps and state.global_step >= cfg.stop_after_steps)
        boundary = len(pending) >= cfg.log_every or b + 1 == loop.steps_per_epoch or at_limit
        signalled = stop.agreed() if boundary or world == 1 else False
        stopping = signalled or at_limit
        if boundary or stopping:
            diverged = _flush(loop, state, pending, epoch, lr, timer.window_ms(), bar)
            if diverged:
                ended = ("diverged", diverged)
                break
        if stopping:
            ended = ("interrupted", stop.reason() if signalled else f"stop_after_steps={cfg.stop_after_steps}")
            break
    state.train_time_s += timer.total()
    bar.close()
    return ended


def _flush(loop: _Loop, state: TrainState, pending: list[tuple[int, torch.Tensor, int | torch.Tensor]],
           epoch: int, lr: float, step_ms: float | None, bar: tqdm) -> str | None:
    """Read the pending steps' losses on the host: log their mean, add them to the epoch's.

    Checking losses on the host only every log_every steps keeps the GPU queue full; the
    first non-finite step is still named exactly: its reason is returned (else None).
    """
    # Averaged over ranks: the global batch's loss, and the same verdict everywhere.
    values = distributed.mean_over_ranks(torch.stack([l for _, l, _ in pending]).float()).cpu()
    # for tokens/s: every rank's slice is alike in size; the untimed first step does not count
    state.train_tokens += int(sum(n for s, _, n in pending if s != loop.first_step)) * distributed.world_size()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        return f"non-finite loss ({values[i].item()}) at step {pending[i][0] + 1}"
    mean = values.mean().item()
    state.epoch_loss_sum += values.double().sum().item()
    state.epoch_loss_n += len(values)
    pending.clear()
    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
    loop.log.write({"kind": "step", "step": state.global_step, "epoch": epoch + 1, "loss": mean, "lr": lr,
                    "step_ms": step_ms})
    if not loop.log.tty:
        timing = f" {step_ms:.1f} ms/step" if step_ms is not None else ""
        loop.log.line(f"step {state.global_step}/{loop.total_steps} epoch {epoch + 1} loss {mean:.4f} lr {lr:.2e}"
                      + timing)
    return None


# TrainConfig fields that only say how long to run or how to execute: they may change on resume
# (the two ways of computing the head's cross-entropy compute the same function).
RESUME_MAY_CHANGE = ("stop_after_steps", "log_every", "device", "compile", "compile_mode", "head_loss")
# Likewise the mixer's implementation (`impl`: its name in older checkpoints).
MIXER_MAY_CHANGE = ("mixer_impl", "impl")


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            identity: dict[str, Any], device: torch.device) -> TrainState:
    """Load last.pt into model and optimizer after checking it is this run's.

    The file is read to the CPU: the RNG setters take CPU tensors only, and
    `load_state_dict` copies weights and optimizer state to the parameters' device.
    """
    ckpt = load_checkpoint(path, "cpu")
    saved = {k: v for k, v in ckpt["meta"].items() if k != "state"}
    if saved.get("train", {}).get("precision") == "auto":  # stored unresolved before: as resolved here
        saved["train"] = {**saved["train"], "precision": resolve_precision("auto", device)}
    mismatched = config_mismatch(_fixed_settings(saved), _fixed_settings(identity))
    if mismatched:
        raise CheckpointError(f"{path} was written by another configuration: " + "; ".join(mismatched))
    model.load_state_dict(ckpt["model"])
    if ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    # Resumed on as many processes, every rank continues its own RNG streams exactly; on
    # more, the extra ranks keep the fresh seed `fit` gave them.
    if distributed.rank() < len(ckpt["rng"]):
        set_rng_state(ckpt["rng"][distributed.rank()], device)
    return TrainState(**ckpt["meta"]["state"])


def _fixed_settings(identity: dict[str, Any]) -> dict[str, Any]:
    """`identity` less what a resume may change (RESUME_MAY_CHANGE, MIXER_MAY_CHANGE)."""
    fixed = {**identity, "train": {k: v for k, v in identity.get("train", {}).items() if k not in RESUME_MAY_CHANGE}}
    model = identity.get("model")
    if isinstance(model, dict) and isinstance(model.get("mixer"), dict):
        mixer = {k: v for k, v in model["mixer"].items() if k not in MIXER_MAY_CHANGE}
        fixed["model"] = {**model, "mixer": mixer}
    return fixed


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalars(metrics).items())


def _record_epoch(state: TrainState, epoch: int, train_loss: float, metrics: dict[str, Any],
                  task: Task, log: Log) -> None:
    """Append the epoch to the history and update the best validation score."""
    value = metrics[task.metric]
    best = state.best
    improved = best is None or (value > best if task.higher_is_better else value < best)
    if improved:
        state.best, state.best_epoch = value, epoch + 1
    state.history.append(
        {"epoch": epoch + 1, "train_loss": train_loss, **{f"val_{k}": v for k, v in _scalars(metrics).items()}}
    )
    log.write({"kind": "eval", "epoch": epoch + 1, "split": "validation", **_scalars(metrics)})
    log.line(f"EVAL split=validation epoch={epoch + 1} {_fmt(metrics)} best_epoch={state.best_epoch}")


def _results(state: TrainState, run_info: dict[str, Any], test: dict[str, Any] | None, *, status: str,
             stop_reason: str | None, stopped_early: bool, device: torch.device, model: nn.Module,
             env: dict[str, Any]) -> dict[str, Any]:
    from .models import count_parameters

    best_row = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    return {
        **run_info["summary"],
        "params": count_parameters(model),
        "status": status,
        "stop_reason": stop_reason,
        "epochs": state.history,
        "epochs_run": len(state.history),
        "stopped_early": stopped_early,
        "best_epoch": state.best_epoch,
        **{f"best_{k}": v for k, v in best_row.items() if k.startswith("val_")},
        "test": test,
        "train_time_s": state.train_time_s,
        "tokens_per_s": state.train_tokens / state.train_time_s if state.train_time_s else None,
        "first_step_s": state.first_step_s,
        "peak_mem_mb": peak_memory_mb(device),
        "device": str(device),
        "world_size": distributed.world_size(),
        # the newest finished copy of a (configuration, seed) is the one the analysis keeps
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "env": env,
    }
