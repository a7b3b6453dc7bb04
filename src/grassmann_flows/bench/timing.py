"""What every benchmark part shares: timing, error guards, progress lines, table cells, figures."""

from __future__ import annotations

import gc
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from ..ops.wedge_project import triton_available


def slug(text: str) -> str:
    """A device name as a file name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int, max_step_s: float
) -> dict[str, Any]:
    """Median ms of `step` over `steps` calls after `warmup` calls, and peak memory.

    The first call (compilation, autotuning, CUDA-graph capture happen there) is timed
    on its own; the second decides whether the configuration is too slow to measure.
    """
    out: dict[str, Any] = {}
    for name in ("first_step_s", "second_step_s"):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        out[name] = time.perf_counter() - t0
    if out["second_step_s"] > max_step_s:
        out["skipped"] = f"a step took {out['second_step_s']:.1f} s > --max-step-s {max_step_s:g}"
        return out
    for _ in range(max(0, warmup - 2)):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
        ]
        for start, end in events:
            start.record()
            step()
            end.record()
        sync(device)
        times = [start.elapsed_time(end) for start, end in events]
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        out["peak_mb"] = None  # no allocator statistics on CPU
    out["ms"] = statistics.median(times)
    out["ms_min"] = min(times)
    out["ms_max"] = max(times)
    out["steps"] = steps
    return out


def guarded(fn: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Run one configuration; out-of-memory and errors become a recorded reason."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        return {"skipped": "out of memory"}
    except Exception as exc:  # recorded and printed; one broken configuration must not end the run
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def fused_skip_reason(device: torch.device) -> str | None:
    """Why the fused kernel cannot run here, or None."""
    if not triton_available():
        return "Triton is not installed"
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes"):
        return "Triton kernels need a GPU; on CPU set TRITON_INTERPRET=1 to run them in the interpreter"
    return None


def progress(part: str, row: dict[str, Any]) -> None:
    """One stderr line per measured row, as it finishes."""
    name = row.get("layer") or f"{row['model']} {row.get('mode', '')}".strip()
    shape = f"L={row['L']} B={row['B']}" if "L" in row else f"C={row['C']}/{row['n_positions']} B={row['B']}"
    shape += f" N={row['N']}" if "N" in row else ""
    if "ms" in row:
        mem = f", peak {row['peak_mb']:.0f} MB" if row.get("peak_mb") is not None else ""
        status = f"{row['ms']:.2f} ms{mem}"
    else:
        status = row.get("skipped") or row.get("error")
    print(f"[{part}] {shape} {name}: {status}", file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str = ".2f") -> str:
    """A table cell of a number that may be missing."""
    return "—" if value is None else format(value, spec)


def cell(row: dict[str, Any] | None, key: str, spec: str) -> str:
    """A table cell of `row[key]`, or why the row has none (skipped / error)."""
    if row is None:
        return "—"
    if key in row and row[key] is not None:
        return format(row[key], spec)
    return "skipped" if "skipped" in row else ("error" if "error" in row else "—")


def ratio(row: dict[str, Any] | None, ref: dict[str, Any] | None, key: str) -> str:
    """A table cell of row[key] / ref[key], e.g. '2.31×'."""
    if not row or not ref or row.get(key) is None or ref.get(key) is None:
        return "—"
    return f"{row[key] / ref[key]:.2f}×"


def save_figure(fig: Any, title: str, stem: Path) -> list[str]:
    """Title `fig`, write it as stem.png and stem.svg, close it; returns the files."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    files = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150)
        files.append(str(path))
    plt.close(fig)
    return files

