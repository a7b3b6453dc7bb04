"""Slots and the queue: how many runs go at once on which GPUs, and the queue that keeps
every slot busy, trains, evaluates, and stops cleanly on a budget or a signal."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..data.sources import REPO_ROOT
from ..runs import OOM_LINE, default_cache_dir
from ..training import OUTPUT_LOGGED_ENV, RESUME_HINT_ENV
from .plan import Knobs, PreflightError, Run
from .preflight import newest

# Auto RUNS_PER_GPU: an assumed upper bound on one run's GPU memory (18M parameters, batch
# 16 x 256, bf16, compiled) and CPU cores per run (the Python launch loop, data, compile).
GPU_GIB_PER_RUN = 10
CORES_PER_RUN = 2
MAX_RUNS_PER_GPU = 8


# --------------------------------------------------------------------------- slots


def _visible_free_gib(smi_csv: str, visible: str | None) -> list[float]:
    """Free GiB of the GPUs CUDA_VISIBLE_DEVICES names, in its order, from nvidia-smi's
    `index, uuid, memory.free` rows (MiB); an entry is an index or a (prefix of a) UUID."""
    rows = [[c.strip() for c in line.split(",")] for line in smi_csv.strip().splitlines() if line.strip()]
    free = {index: float(mib) / 1024 for index, _, mib in rows}
    if visible is None:
        return [free[index] for index, _, _ in rows]
    out = []
    for entry in (e.strip() for e in visible.split(",")):
        match = [index for index, uuid, _ in rows if entry == index or (entry and uuid.startswith(entry))]
        if len(match) != 1:
            break  # CUDA stops at the first entry it cannot resolve
        out.append(free[match[0]])
    return out


_FREE_PROBE = "import torch; print(*[torch.cuda.mem_get_info(i)[0] / 2**30 for i in range(torch.cuda.device_count())])"


def _gpu_free_gib() -> list[float]:
    """Free memory of each visible GPU: nvidia-smi, else torch in a child process.

    The child exits with its CUDA context: this process, the queue's parent for the whole
    grid, holds none on any GPU its runs use.
    """
    import torch

    n = torch.cuda.device_count()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        free = _visible_free_gib(out, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if len(free) == n:
            return free
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    out = subprocess.run([sys.executable, "-c", _FREE_PROBE], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return [float(x) for x in out.split()]


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


def _libc_prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux, looked up here: a forked child should not load libraries."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None).prctl


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a run's process before it starts (Linux): SIGKILL it when the queue dies.

    A run has its own session, so a `timeout -k` that kills the queue's process group
    (scripts/gpu_window.sh) would not reach it, and it would keep its GPU. The queue has
    already sent it SIGTERM (save last.pt) by then. The signal follows the thread that
    started the run, which waits for it to end.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


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
        # Each run's share of the cores, for its threads and for inductor's compile workers
        # (whose pool is as large as the machine by default, in every run at once).
        share = str(max(1, (os.cpu_count() or 1) // len(self.slots)))
        env.setdefault("OMP_NUM_THREADS", share)
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", share)
        env[RESUME_HINT_ENV] = "RESUME=1"  # a stopped run names the user's knob, not --resume
        env[OUTPUT_LOGGED_ENV] = "1"  # a run's whole output goes to its train.log already
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
                                    start_new_session=True,  # signals reach it from the queue only
                                    preexec_fn=_die_with_parent)
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
            oom: list[str] = []

            def on_line(line: str) -> None:
                if line.startswith("step "):  # its first logged step ends the compilation its shape's runs wait for
                    self._warm.add(run.compile_key)
                elif line.startswith(OOM_LINE):
                    oom.append(line.strip())

            rc = self._execute(cmd, run_dir / "train.log", slot, on_line)
            self._warm.add(run.compile_key)
            if rc is None:
                return Outcome(run.name, run.stage, "not started", estimate_s=estimate_s)
            out.train_s = time.perf_counter() - t0
            out.out_dir = str(run_dir)
            if rc != 0:
                if self.stop_reason:
                    out.status, out.note = "cut", self.stop_reason
                    _mark_cut(run, run_dir, self.stop_reason)
                elif oom:  # the grid goes on; the run's note says what to change
                    out.status, out.note = "failed", f"{oom[0]}; see {run_dir / 'train.log'}"
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
    from ..data.sources import atomic_write

    record = {"run_name": run.name, "task": run.task, **run.expect, "status": "interrupted",
              "stop_reason": f"{reason} before the first checkpoint", "epochs": [], "test": None}
    atomic_write(path, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
