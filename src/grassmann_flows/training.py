"""The training loop shared by WikiText-2 LM and SNLI: one `fit`, two `Task`s.

A `Task` knows how to turn a batch into a loss and how to evaluate a split; `fit`
owns everything else: optimizer and schedule, precision, compilation, progress,
metrics, checkpoints, resuming, interruption, divergence and multi-GPU data parallelism.

Under torchrun (WORLD_SIZE > 1) every rank trains a DistributedDataParallel copy on its
equal slice of each global batch; rank 0 alone evaluates and writes the run directory.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
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
from .utils.env import environment


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
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    compile: str = "auto"  # auto (on for CUDA) | on | off
    compile_mode: str = "default"  # torch.compile mode, e.g. reduce-overhead (CUDA graphs)
    max_steps_per_epoch: int = 0  # 0 = the whole split; QUICK runs cap it
    eval_max_batches: int = 0  # 0 = the whole split
    eval_batch_size: int = 0  # 0 = batch_size
    log_every: int = 50
    stop_after_steps: int = 0  # save last.pt and stop after this many steps (0 = never)
    patience: int = 0  # stop after this many evaluations without a validation improvement (0 = off)


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
        self, model: nn.Module, split: str, device: torch.device, batch_size: int, max_batches: int
    ) -> dict[str, Any]:
        """Metrics of a split: at least "loss" and the task's `metric`."""
        ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default; float32 on the CPU."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
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
    """Turns SIGINT/SIGTERM into a flag the loop checks at step boundaries."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name

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


def gather_batch(ds: Any, idx: list[int], device: torch.device) -> Any:
    """Stack items `idx` of a dataset whose items are tuples or dicts of tensors."""
    items = [ds[i] for i in idx]
    if isinstance(items[0], dict):
        return {k: torch.stack([it[k] for it in items]).to(device, non_blocking=True) for k in items[0]}
    return tuple(torch.stack(col).to(device, non_blocking=True) for col in zip(*items))


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
    Writes into run_dir: config.json, metrics.jsonl, best.pt, last.pt, results.json.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    device = distributed.init(resolve_device(cfg.device))
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
    total_steps = cfg.epochs * steps_per_epoch
    identity = {**run_info, "train": asdict(cfg)}
    log = Log(run_dir, enabled=distributed.is_rank0())

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [],
                             "best": None, "best_epoch": None, "train_time_s": 0.0, "train_tokens": 0,
                             "epoch_loss_sum": 0.0, "epoch_loss_n": 0}
    if resume:
        state = _resume(run_dir / "last.pt", model, optimizer, identity, device)
        log.line(f"resumed from {run_dir / 'last.pt'} at epoch {state['epoch'] + 1}, step {state['global_step']}")
    elif log.enabled:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    if log.enabled:
        (run_dir / "config.json").write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")

    # DDP averages the gradients across ranks during backward. `model` itself is what is
    # evaluated and checkpointed, so state_dict keys never get DDP's "module." prefix.
    train_model: nn.Module = model
    if world > 1:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    if use_compile:
        train_model = torch.compile(train_model, mode=cfg.compile_mode)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def checkpoint(name: str) -> None:
        # Called by every rank at the same point: each rank's RNG state goes into the file,
        # so a resumed run continues every rank's dropout stream exactly.
        rngs = distributed.gather_objects(rng_state())
        if distributed.is_rank0():
            save_checkpoint(run_dir / name, model, {**identity, "state": state}, optimizer, rngs)

    status, stop_reason = "completed", None
    with StopRequest() as stop:
        for epoch in range(state["epoch"], cfg.epochs):
            state["epoch"] = epoch
            order = epoch_order(task.n_train(), cfg.seed, epoch)
            model.train()
            bar = log.bar(steps_per_epoch, state["step_in_epoch"], f"epoch {epoch + 1}/{cfg.epochs}")
            # (step, loss, tokens) not yet read on the host
            pending: list[tuple[int, torch.Tensor, int | torch.Tensor]] = []
            t0 = time.perf_counter()
            for b in range(state["step_in_epoch"], steps_per_epoch):
                step = state["global_step"]
                lr = lr_at(step, total_steps, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # This rank's equal slice of the global batch; together the slices are the
                # single-process batch. DDP's gradient average is then the gradient of the
                # global mean loss, as every slice holds as many loss terms (one per SNLI
                # pair; seq_len, or seq_len - 1 with l_shift, targets per LM block).
                rows = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].view(world, -1)[rank]
                batch = task.train_batch(rows, device)
                with autocast(device, cfg.precision):
                    loss, n_items = task.loss(train_model, batch)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                state["step_in_epoch"] = b + 1
                pending.append((step, loss.detach(), n_items))
                bar.update(1)
                # Agreed by all ranks, which may see a signal a step apart, so that they stop
                # (and checkpoint) at the same step.
                signalled = distributed.any_rank(stop.signal is not None)
                stopping = signalled or (cfg.stop_after_steps and state["global_step"] >= cfg.stop_after_steps)
                if len(pending) >= cfg.log_every or b + 1 == steps_per_epoch or stopping:
                    # Checking losses on the host only every log_every steps keeps the
                    # GPU queue full; the first non-finite step is still named exactly.
                    # Averaged over ranks: the global batch's loss, and the same verdict everywhere.
                    values = distributed.mean_over_ranks(torch.stack([l for _, l, _ in pending]).float()).cpu()
                    # for tokens/s: every rank's slice is alike in size
                    state["train_tokens"] += int(sum(n for _, _, n in pending)) * world
                    bad = (~torch.isfinite(values)).nonzero()
                    if len(bad):
                        bad_step = pending[int(bad[0])][0]
                        stop_reason = f"non-finite loss ({values[int(bad[0])].item()}) at step {bad_step + 1}"
                        status = "diverged"
                        break
                    mean = values.mean().item()
                    state["epoch_loss_sum"] += values.double().sum().item()
                    state["epoch_loss_n"] += len(values)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                    log.write({"kind": "step", "step": state["global_step"], "epoch": epoch + 1, "loss": mean, "lr": lr})
                    if not log.tty:
                        log.line(f"step {state['global_step']}/{total_steps} epoch {epoch + 1} loss {mean:.4f} lr {lr:.2e}")
                    pending.clear()
                if stopping:
                    stop_reason = (f"received {stop.signal or 'a signal on another rank'}" if signalled
                                   else f"stop_after_steps={cfg.stop_after_steps}")
                    status = "interrupted"
                    break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            state["train_time_s"] += time.perf_counter() - t0
            bar.close()
            if status != "completed":
                break
            # Rank 0 evaluates while the others wait; all record its metrics and so keep
            # the same state (best epoch, history) and reach the same checkpoint calls.
            metrics = (task.evaluate(model, "validation", device, eval_bs, cfg.eval_max_batches)
                       if distributed.is_rank0() else None)
            metrics = distributed.broadcast_object(metrics)
            if not math.isfinite(metrics["loss"]):
                # Finite training losses can still end in non-finite weights (an inf gradient
                # through clipping): they must not overwrite the last good last.pt.
                status = "diverged"
                stop_reason = f"non-finite validation loss ({metrics['loss']}) after step {state['global_step']}"
                break
            train_loss = state["epoch_loss_sum"] / max(1, state["epoch_loss_n"])
            _record_epoch(state, epoch, train_loss, metrics, task, log)
            if state["best_epoch"] == epoch + 1:
                checkpoint("best.pt")
            state.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_n=0)
            checkpoint("last.pt")
        if status == "interrupted":
            checkpoint("last.pt")
            log.line(f"stopped: {stop_reason}; saved {run_dir / 'last.pt'} (continue with --resume)")
        elif status == "diverged":
            log.line(f"DIVERGED: {stop_reason}; the last good checkpoints are kept, results.json records the failure")

    test = None
    if status == "completed" and distributed.is_rank0() and (run_dir / "best.pt").is_file():
        model.load_state_dict(load_checkpoint(run_dir / "best.pt", device)["model"])
        test = task.evaluate(model, "test", device, eval_bs, cfg.eval_max_batches)
        log.write({"kind": "eval", "epoch": state["best_epoch"], "split": "test", **_scalars(test)})
        log.line(f"EVAL split=test best_epoch={state['best_epoch']} " + _fmt(test))
    results = _results(state, run_info, task, test, status, stop_reason, device, model)
    if distributed.is_rank0():
        atomic_write(run_dir / "results.json", lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    # The others wait for rank 0's writes: torchrun stops the whole job as soon as one
    # worker exits with a non-zero code (130 when interrupted, 3 when diverged).
    distributed.barrier()
    distributed.cleanup()
    return results


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            identity: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Load last.pt into model and optimizer after checking it is this run's."""
    ckpt = load_checkpoint(path, device)
    saved = {k: v for k, v in ckpt["meta"].items() if k != "state"}
    # Settings that only say how long to run may change on resume; the rest may not.
    volatile = {"stop_after_steps", "log_every", "device", "compile", "compile_mode"}
    mismatched = [m for m in config_mismatch(saved, identity) if m.split(" ")[0].split(".")[-1] not in volatile]
    if mismatched:
        raise CheckpointError(f"{path} was written by another configuration: " + "; ".join(mismatched))
    model.load_state_dict(ckpt["model"])
    if ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    # Resumed on as many processes, every rank continues its own RNG streams exactly; on
    # more, the extra ranks keep the fresh seed `fit` gave them.
    if distributed.rank() < len(ckpt["rng"]):
        set_rng_state(ckpt["rng"][distributed.rank()])
    return ckpt["meta"]["state"]


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in _scalars(metrics).items())


def _record_epoch(state: dict[str, Any], epoch: int, train_loss: float, metrics: dict[str, Any],
                  task: Task, log: Log) -> None:
    """Append the epoch to the history and update the best validation score."""
    value = metrics[task.metric]
    best = state["best"]
    improved = best is None or (value > best if task.higher_is_better else value < best)
    if improved:
        state["best"], state["best_epoch"] = value, epoch + 1
    state["history"].append(
        {"epoch": epoch + 1, "train_loss": train_loss, **{f"val_{k}": v for k, v in _scalars(metrics).items()}}
    )
    log.write({"kind": "eval", "epoch": epoch + 1, "split": "validation", **_scalars(metrics)})
    log.line(f"EVAL split=validation epoch={epoch + 1} {_fmt(metrics)} best_epoch={state['best_epoch']}")


def _results(state: dict[str, Any], run_info: dict[str, Any], task: Task, test: dict[str, Any] | None,
             status: str, stop_reason: str | None, device: torch.device, model: nn.Module) -> dict[str, Any]:
    from .models import count_parameters

    best_row = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), {})
    return {
        **run_info["summary"],
        "params": count_parameters(model),
        "status": status,
        "stop_reason": stop_reason,
        "epochs": state["history"],
        "best_epoch": state["best_epoch"],
        **{f"best_{k}": v for k, v in best_row.items() if k.startswith("val_")},
        "test": test,
        "train_time_s": state["train_time_s"],
        "tokens_per_s": state["train_tokens"] / state["train_time_s"] if state["train_time_s"] else None,
        "peak_mem_mb": peak_memory_mb(device),
        "device": str(device),
        "world_size": distributed.world_size(),
        "env": environment(),
    }
