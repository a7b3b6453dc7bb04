#!/usr/bin/env python
"""Step time and peak memory of the Grassmann mixer (naive / fast / fused) against SDPA attention.

    python scripts/benchmark.py                           # current GPU, everything below
    python scripts/benchmark.py --only mixer              # (a) only
    python scripts/benchmark.py --compile-mode none       # (b) eager only
    python scripts/benchmark.py --settings grid           # (b) at all four (L, N) of the WT2 grid
    python scripts/benchmark.py --quick --device cpu      # smoke test: tiny sizes, few steps
    python scripts/benchmark.py --only decode --device cpu  # (c) only, on the CPU

(a) One mixing layer, forward + backward under bf16 autocast: the paper's GrassmannMixer
    (r = 32, offsets {1,2,4,8,12,16}, d = 256) with mixer_impl naive / fast / fused, and a
    causal SDPA self-attention layer (d = 256, 4 heads), at L in {256, ..., 32768} with
    B * L = 32768 tokens.
(b) Whole training steps (forward + backward + fused AdamW step, bf16 autocast, random
    tokens, BERT vocabulary 30,522) of TransformerLM and GrassmannLM naive / fast / fused
    at the paper's settings (L=128, N=6, B=32) and (L=256, N=12, B=16), eager and under
    torch.compile (--compile-mode, default "default reduce-overhead").

(c) Generation, one token per step: per-token latency and memory of the Transformer LM
    (KV cache) and the Grassmann LM (window of the last max|offset| reduced vectors per
    layer) at context C, batch 1 and 32, paper preset, N = 12, random weights (speed needs
    no trained weights). C runs up to n_positions = 256, and to 16,384 for a model built
    with a 16,384-row position table. The state is filled with random values up to
    C - warmup - steps; the timed steps are the last ones before C (a step's cost does not
    depend on the values, and a real prefill of 16K tokens at batch 32 would dominate the
    run). Memory is the state's size at C (both devices) and the peak allocated (CUDA).
    bf16 weights on CUDA, float32 on the CPU. A state over --max-state-mb is skipped.
    Written to <gpu-slug>-<YYYY-MM-DD>-decode.json / .png / .svg with --only decode.

Times are medians over --steps steps after --warmup steps, taken with CUDA events (wall
clock on CPU); peak memory is torch.cuda.max_memory_allocated over the timed steps
(not measured on CPU). A configuration that runs out of memory, or whose second step
takes longer than --max-step-s, is recorded as skipped with the reason; one that raises
is recorded with the error, and the run goes on.

Writes results/bench/<gpu-slug>-<YYYY-MM-DD>.json (environment header, every row, the
projection), a log-log plot of (a) as .png and .svg beside it, and prints markdown tables
with Grassmann / attention ratios and the projected wall-clock of the WikiText-2 grid
(both models, L in {128, 256}, N in {6, 12}, 30 epochs of ~2.33M training tokens) from
the measured tokens/s. The fused rows need Triton and a GPU; on CPU they are skipped
unless TRITON_INTERPRET=1, which runs them through Triton's interpreter (slow, only
meaningful as a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))
# The benchmark alone tunes the Triton kernels (training uses their one pinned config);
# read when the kernels are imported.
os.environ.setdefault("GRASSMANN_FLOWS_KERNEL_CONFIG", "autotune")

from grassmann_flows.ops.wedge_project import triton_available  # noqa: E402
from grassmann_flows.models import build_model, resolve_config  # noqa: E402
from grassmann_flows.models.attention import SelfAttention  # noqa: E402
from grassmann_flows.models.mixer import GrassmannMixer  # noqa: E402
from grassmann_flows.utils.env import environment  # noqa: E402

IMPLS = ("naive", "fast", "fused")
LAYERS = ("attention",) + tuple(f"grassmann-{impl}" for impl in IMPLS)
MODELS = ("transformer",) + tuple(f"grassmann-{impl}" for impl in IMPLS)

# (a): sequence lengths at a fixed token count, so every point does the same token work.
MIXER_LENGTHS = (256, 1024, 4096, 16384, 32768)
MIXER_TOKENS = 32768
MIXER_DIMS = {"d_model": 256, "n_heads": 4, "reduced_dim": 32}
# (b): (L, N, B). The paper trains L=128 with N=6, B=32 and L=256 with N=12, B=16.
PAPER_SETTINGS = ((128, 6, 32), (256, 12, 16))
GRID_SETTINGS = PAPER_SETTINGS + ((128, 12, 32), (256, 6, 16))
# The WikiText-2 grid the projection prices: both models at every (L, N), 30 epochs.
GRID_RUNS = tuple((L, N, B) for L, B in ((128, 32), (256, 16)) for N in (6, 12))
EPOCHS = 30
# WikiText-2 train split in bert-base-uncased tokens, estimated (no committed run has counted
# it yet): its 2,088,628 words x the 1.116 BERT tokens per word of the validation split.
TRAIN_TOKENS_PER_EPOCH = 2.33e6

# (c): the model of the L=256, N=12 setting, its contexts, and a long-context model.
DECODE_OPTIONS = {"n_layers": 12, "n_positions": 256}
DECODE_CONTEXTS = (16, 64, 256)
LONG_POSITIONS = 16384
LONG_CONTEXTS = (1024, 4096, 16384)
DECODE_BATCHES = (1, 32)
DECODE_MODELS = ("transformer", "grassmann")

# --quick: sizes that run in seconds on a CPU; the numbers only show the script works.
QUICK_LENGTHS = (16, 64)
QUICK_TOKENS = 128
QUICK_MIXER_DIMS = {"d_model": 64, "n_heads": 4, "reduced_dim": 8}
QUICK_SETTINGS = ((32, 2, 2),)
QUICK_MODEL_OPTIONS = {"d_model": 64, "n_heads": 4, "d_ff": 128, "reduced_dim": 8, "vocab_size": 1000}
QUICK_DECODE = {"n_layers": 2, "n_positions": 32, "contexts": (8, 32), "long_positions": 128, "long_contexts": (128,)}


# --------------------------------------------------------------------------- environment


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
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
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        out[name] = time.perf_counter() - t0
    if out["second_step_s"] > max_step_s:
        out["skipped"] = f"a step took {out['second_step_s']:.1f} s > --max-step-s {max_step_s:g}"
        return out
    for _ in range(max(0, warmup - 2)):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
        ]
        for start, end in events:
            start.record()
            step()
            end.record()
        _sync(device)
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


# --------------------------------------------------------------------------- (a) mixer layer


def bench_mixer(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    dims = QUICK_MIXER_DIMS if args.quick else MIXER_DIMS
    lengths = QUICK_LENGTHS if args.quick else (args.lengths or MIXER_LENGTHS)
    tokens = QUICK_TOKENS if args.quick else MIXER_TOKENS
    rows = []
    for L in lengths:
        B = max(1, tokens // L)
        for layer_name in ("attention", *(f"grassmann-{impl}" for impl in args.impls)):
            row: dict[str, Any] = {"L": L, "B": B, "tokens": B * L, "layer": layer_name, **dims}
            impl = layer_name.removeprefix("grassmann-") if layer_name != "attention" else None
            reason = fused_skip_reason(device) if impl == "fused" else None
            if reason:
                row["skipped"] = reason
            else:
                row.update(guarded(lambda: _mixer_point(args, device, impl, B, L, dims), device))
            rows.append(row)
            _progress("mixer", row)
    return rows


def _mixer_point(
    args: argparse.Namespace, device: torch.device, impl: str | None, B: int, L: int, dims: dict[str, int]
) -> dict[str, Any]:
    d = dims["d_model"]
    if impl is None:
        layer: torch.nn.Module = SelfAttention(d, dims["n_heads"], dropout=0.0, causal=True)
    else:
        cfg = resolve_config(
            "grassmann", "paper", n_layers=6, d_model=d, reduced_dim=dims["reduced_dim"], mixer_impl=impl
        )
        layer = GrassmannMixer(d, cfg.mixer, cfg.layer_offsets(0))
        if layer.impl != impl:
            return {"skipped": f"mixer_impl={impl!r} resolved to {layer.impl!r}"}
    layer = layer.to(device)
    params = list(layer.parameters())
    h = torch.randn(B, L, d, device=device, requires_grad=True)
    dy = torch.randn(B, L, d, device=device)

    def step() -> None:
        h.grad = None
        for p in params:
            p.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = layer(h)
        out.backward(dy.to(out.dtype))

    return measure(step, device, args.warmup, args.steps, args.max_step_s)


# --------------------------------------------------------------------------- (b) training steps


def bench_models(args: argparse.Namespace, device: torch.device, modes: list[str]) -> list[dict[str, Any]]:
    settings = QUICK_SETTINGS if args.quick else (GRID_SETTINGS if args.settings == "grid" else PAPER_SETTINGS)
    extra = QUICK_MODEL_OPTIONS if args.quick else {}
    rows = []
    for L, N, B in settings:
        for model_name in ("transformer", *(f"grassmann-{impl}" for impl in args.impls)):
            for mode in ["eager", *modes]:
                row: dict[str, Any] = {"L": L, "N": N, "B": B, "tokens": B * L, "model": model_name, "mode": mode}
                impl = model_name.removeprefix("grassmann-") if model_name != "transformer" else None
                reason = fused_skip_reason(device) if impl == "fused" else None
                if mode == "reduce-overhead" and device.type != "cuda":
                    reason = "reduce-overhead captures CUDA graphs: CUDA only"
                if reason:
                    row["skipped"] = reason
                else:
                    row.update(guarded(lambda: _model_point(args, device, impl, mode, L, N, B, extra), device))
                    if mode != "eager":
                        torch._dynamo.reset()  # drop compiled code so configurations stay independent
                if "ms" in row:
                    row["tokens_per_s"] = B * L / (row["ms"] / 1e3)
                rows.append(row)
                _progress("model", row)
    return rows


def _model_point(
    args: argparse.Namespace, device: torch.device, impl: str | None, mode: str,
    L: int, N: int, B: int, extra: dict[str, Any],
) -> dict[str, Any]:
    kind = "transformer" if impl is None else "grassmann"
    options = dict(extra, n_layers=N, n_positions=L)
    if impl is not None:
        options["mixer_impl"] = impl
    model = build_model(kind, preset="paper", **options).to(device).train()
    if impl is not None and any(block.mixer.impl != impl for block in model.backbone.blocks):
        return {"skipped": f"mixer_impl={impl!r} resolved to another implementation"}
    # Fused AdamW: one multi-tensor kernel per step on CUDA (CPU has a fused kernel too).
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, fused=True)
    forward = model if mode == "eager" else torch.compile(model, mode=mode)
    V = model.cfg.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, V, (B, L), generator=gen).to(device)
    targets = torch.randint(0, V, (B, L), generator=gen).to(device)

    def step() -> None:
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(ids)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = measure(step, device, args.warmup, args.steps, args.max_step_s)
    result["params"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return result


# --------------------------------------------------------------------------- (c) decoding


def bench_decode(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Per-token latency and state memory of incremental decoding at each context C."""
    extra = QUICK_MODEL_OPTIONS if args.quick else {}
    n_layers = QUICK_DECODE["n_layers"] if args.quick else DECODE_OPTIONS["n_layers"]
    tables = (
        (QUICK_DECODE["n_positions"], QUICK_DECODE["contexts"]), (QUICK_DECODE["long_positions"], QUICK_DECODE["long_contexts"])
    ) if args.quick else ((DECODE_OPTIONS["n_positions"], DECODE_CONTEXTS), (LONG_POSITIONS, LONG_CONTEXTS))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for n_positions, contexts in tables:
        for kind in DECODE_MODELS:
            torch.manual_seed(0)
            model = build_model(kind, "paper", **extra, n_layers=n_layers, n_positions=n_positions)
            model = model.to(device=device, dtype=dtype).eval()
            for B in DECODE_BATCHES:
                for C in contexts:
                    row: dict[str, Any] = {"model": kind, "n_positions": n_positions, "N": n_layers, "B": B, "C": C,
                                           "dtype": str(dtype).removeprefix("torch.")}
                    mb = _state_mb(model, B, C)
                    if args.max_state_mb is not None and mb > args.max_state_mb:
                        row["skipped"] = f"state of {mb:.0f} MB > --max-state-mb {args.max_state_mb:g}"
                    else:
                        row.update(guarded(lambda: _decode_point(args, device, model, B, C), device))
                    rows.append(row)
                    _progress("decode", row)
            del model
    return rows


def _state_mb(model: torch.nn.Module, B: int, C: int) -> float:
    """Size of the decoding state at context C, from an empty state's tensors: a KV cache
    holds 2*C*d numbers per layer and sequence, the Grassmann window a fixed W*r."""
    kind = model.cfg.kind
    state = model.new_state(B, 1)  # capacity 1: only the per-position size is needed
    per_layer = [(s.k.numel() + s.v.numel()) * C if kind == "transformer" else s.z.numel() for s in state.layers]
    return sum(per_layer) * model.backbone.tok_emb.weight.element_size() / 2**20


@torch.no_grad()
def _decode_point(args: argparse.Namespace, device: torch.device, model: torch.nn.Module,
                  B: int, C: int) -> dict[str, Any]:
    steps = min(args.steps, max(1, C // 2))
    warmup = max(2, min(args.warmup, C - steps))  # `measure` always runs two untimed steps
    state = model.new_state(B, C)
    _fill_state(state, C - warmup - steps)
    tokens = torch.zeros(B, 1, dtype=torch.long, device=device)

    def step() -> None:
        nonlocal tokens
        tokens = model(tokens, state=state)[:, -1:].argmax(-1)  # greedy: the next token feeds the next step

    result = measure(step, device, warmup, steps, args.max_step_s)
    if "skipped" in result:
        return result
    assert state.position == C, (state.position, C)  # the timed steps are the last ones before C
    result["state_mb"] = state.nbytes() / 2**20
    result["tokens_per_s"] = B / (result["ms"] / 1e3)
    return result


def _fill_state(state: Any, n: int) -> None:
    """Put a state at position n with random contents, as if n tokens had been decoded."""
    from grassmann_flows.models.attention import KVCache

    for layer in state.layers:
        if isinstance(layer, KVCache):
            layer.k[:, :, :n].normal_()
            layer.v[:, :, :n].normal_()
            layer.length = n
        else:
            layer.z.normal_()
            layer.seen = n
    state.position = n


# --------------------------------------------------------------------------- projection


def project_grid(model_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Hours to train the WikiText-2 grid, per model variant at its fastest measured mode.

    Each grid run (L, N) uses the measured setting with the same (L, N); otherwise the one
    with the same L, scaled by N / N_measured (basis "depth-scaled"); otherwise the nearest
    measured setting, scaled the same way (basis "proxy", e.g. under --quick). Evaluation
    and data loading are not included.
    """
    measured = [r for r in model_rows if "ms" in r]
    runs: list[dict[str, Any]] = []
    totals: dict[str, float] = {}
    for model_name in MODELS:
        rows = [r for r in measured if r["model"] == model_name]
        if not rows:
            continue
        total = 0.0
        for L, N, B in GRID_RUNS:
            same = [r for r in rows if (r["L"], r["N"]) == (L, N)]
            same_l = [r for r in rows if r["L"] == L]
            pool = same or same_l or rows
            basis = "measured" if same else ("depth-scaled" if same_l else "proxy")
            best_ms = {}
            for r in pool:  # fastest mode per measured setting, then the closest setting
                key = (r["L"], r["N"], r["B"])
                if key not in best_ms or r["ms"] < best_ms[key]["ms"]:
                    best_ms[key] = r
            ref = min(best_ms.values(), key=lambda r: (abs(math.log(r["L"] / L)), abs(r["N"] - N), r["ms"]))
            s_per_token = ref["ms"] / 1e3 / ref["tokens"] * N / ref["N"]
            hours = EPOCHS * TRAIN_TOKENS_PER_EPOCH * s_per_token / 3600
            total += hours
            runs.append({
                "model": model_name, "L": L, "N": N, "B": B, "basis": basis,
                "from": {"L": ref["L"], "N": ref["N"], "B": ref["B"], "mode": ref["mode"]},
                "tokens_per_s": 1 / s_per_token, "hours": hours,
            })
        totals[model_name] = total
    grassmann = {k: v for k, v in totals.items() if k != "transformer"}
    best = min(grassmann, key=grassmann.get) if grassmann else None
    grid_hours = totals["transformer"] + grassmann[best] if best and "transformer" in totals else None
    return {
        "epochs": EPOCHS, "train_tokens_per_epoch": TRAIN_TOKENS_PER_EPOCH,
        "runs": runs, "total_hours": totals, "grassmann_variant": best, "grid_hours": grid_hours,
    }


# --------------------------------------------------------------------------- reporting


def _progress(part: str, row: dict[str, Any]) -> None:
    name = row.get("layer") or f"{row['model']} {row.get('mode', '')}".strip()
    shape = f"L={row['L']} B={row['B']}" if "L" in row else f"C={row['C']}/{row['n_positions']} B={row['B']}"
    shape += f" N={row['N']}" if "N" in row else ""
    if "ms" in row:
        mem = f", peak {row['peak_mb']:.0f} MB" if row.get("peak_mb") is not None else ""
        status = f"{row['ms']:.2f} ms{mem}"
    else:
        status = row.get("skipped") or row.get("error")
    print(f"[{part}] {shape} {name}: {status}", file=sys.stderr, flush=True)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _cell(row: dict[str, Any] | None, key: str, spec: str) -> str:
    if row is None:
        return "—"
    if key in row and row[key] is not None:
        return format(row[key], spec)
    return "skipped" if "skipped" in row else ("error" if "error" in row else "—")


def _ratio(row: dict[str, Any] | None, ref: dict[str, Any] | None, key: str) -> str:
    if not row or not ref or row.get(key) is None or ref.get(key) is None:
        return "—"
    return f"{row[key] / ref[key]:.2f}×"


def mixer_tables(rows: list[dict[str, Any]]) -> str:
    by = {(r["L"], r["layer"]): r for r in rows}
    lengths = sorted({r["L"] for r in rows})
    g_layers = LAYERS[1:]
    lines = []
    for key, unit, spec in (("ms", "ms (fwd+bwd)", ".2f"), ("peak_mb", "peak MB", ".0f")):
        head = ["L", "B", f"attention {unit}"] + [f"{n} {unit}" for n in g_layers]
        head += [f"{n} / attn" for n in g_layers]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for L in lengths:
            attn = by.get((L, "attention"))
            cells = [str(L), str(attn["B"] if attn else "")] + [_cell(attn, key, spec)]
            cells += [_cell(by.get((L, n)), key, spec) for n in g_layers]
            cells += [_ratio(by.get((L, n)), attn, key) for n in g_layers]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    reasons = {
        f"{r['layer']} at L={r['L']}: {r.get('skipped') or r['error']}": None for r in rows if "ms" not in r
    }
    return "\n".join(lines + [f"- {reason}" for reason in reasons]) + "\n"


def model_table(rows: list[dict[str, Any]]) -> str:
    ref = {(r["L"], r["N"], r["mode"]): r for r in rows if r["model"] == "transformer"}
    head = ["L", "N", "B", "model", "mode", "ms/step", "tokens/s", "peak MB", "first step s", "× transformer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: dict[str, None] = {}
    for r in rows:
        cells = [str(r["L"]), str(r["N"]), str(r["B"]), r["model"], r["mode"]]
        if "ms" in r:
            same_mode = ref.get((r["L"], r["N"], r["mode"]))
            cells += [
                _fmt(r["ms"]), _fmt(r["tokens_per_s"], ",.0f"), _fmt(r["peak_mb"], ".0f"),
                _fmt(r["first_step_s"], ".1f"), "" if r["model"] == "transformer" else _ratio(r, same_mode, "ms"),
            ]
        else:
            status = "skipped" if "skipped" in r else "error"
            reasons[f"{status}: {r.get('skipped') or r.get('error')}"] = None
            cells += [status, "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {reason}" for reason in reasons]) + "\n"


def projection_table(proj: dict[str, Any]) -> str:
    head = ["model", "L", "N", "B", "basis", "from (L, N, mode)", "tokens/s", "hours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in proj["runs"]:
        src = r["from"]
        lines.append("| " + " | ".join([
            r["model"], str(r["L"]), str(r["N"]), str(r["B"]), r["basis"],
            f"{src['L']}, {src['N']}, {src['mode']}", f"{r['tokens_per_s']:,.0f}", f"{r['hours']:.2f}",
        ]) + " |")
    lines.append("")
    for model_name, hours in proj["total_hours"].items():
        lines.append(f"- {model_name}: {hours:.2f} h for its four runs")
    if proj["grid_hours"] is not None:
        lines.append(
            f"- grid (transformer + {proj['grassmann_variant']}): {proj['grid_hours']:.2f} h, "
            f"one seed, {proj['epochs']} epochs of {proj['train_tokens_per_epoch'] / 1e6:.1f}M tokens, "
            "training steps only"
        )
    return "\n".join(lines) + "\n"


def _save_figure(fig: Any, title: str, stem: Path) -> list[str]:
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


def decode_table(rows: list[dict[str, Any]]) -> str:
    """Per-token ms and state MB of both models at each (n_positions, B, C), with ratios."""
    by = {(r["n_positions"], r["B"], r["C"], r["model"]): r for r in rows}
    head = ["n_positions", "B", "C", "transformer ms/token", "grassmann ms/token", "Grassmann / Transformer ms",
            "transformer state MB", "grassmann state MB", "Transformer / Grassmann state",
            "transformer peak MB", "grassmann peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n_pos, B, C in sorted({(r["n_positions"], r["B"], r["C"]) for r in rows}):
        t, g = by.get((n_pos, B, C, "transformer")), by.get((n_pos, B, C, "grassmann"))
        lines.append("| " + " | ".join([
            str(n_pos), str(B), str(C), _cell(t, "ms", ".2f"), _cell(g, "ms", ".2f"), _ratio(g, t, "ms"),
            _cell(t, "state_mb", ".3f"), _cell(g, "state_mb", ".3f"), _ratio(t, g, "state_mb"),
            _cell(t, "peak_mb", ".0f"), _cell(g, "peak_mb", ".0f"),
        ]) + " |")
    reasons = {f"{r['model']} B={r['B']} C={r['C']}: {r.get('skipped') or r['error']}": None
               for r in rows if "ms" not in r}
    return "\n".join(lines + [""] + [f"- {reason}" for reason in reasons]) + "\n"


def plot_decode(rows: list[dict[str, Any]], title: str, stem: Path) -> list[str]:
    """Log-log ms per token and state MB against C, per model and batch; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "ms", "ms per generated token"), (axes[1], "state_mb", "decoding state (MB)")):
        for model in DECODE_MODELS:
            for B in DECODE_BATCHES:
                pts = sorted((r["C"], r[key]) for r in rows
                             if (r["model"], r["B"]) == (model, B) and r.get(key) is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", linestyle="-" if model == "transformer" else "--",
                            label=f"{model} B={B}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context C (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save_figure(fig, title, stem)


def plot(rows: list[dict[str, Any]], title: str, stem: Path) -> list[str]:
    """Log-log ms and peak MB against L for every layer; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "ms", "forward + backward (ms)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for layer in LAYERS:
            pts = sorted((r["L"], r[key]) for r in rows if r["layer"] == layer and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=layer)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured on this device", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            lengths = sorted({r["L"] for r in rows})
            ax.set_xticks(lengths, [str(L) for L in lengths])
            ax.legend()
        ax.set_xlabel("sequence length L (B·L fixed)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    return _save_figure(fig, title, stem)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (smoke test)")
    p.add_argument("--only", choices=("mixer", "model", "decode"), help="run one part only")
    p.add_argument(
        "--compile-mode", nargs="+", dest="compile_modes",
        choices=("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile modes for (b), besides eager (default: default reduce-overhead on CUDA, "
             "none with --quick or on CPU)",
    )
    p.add_argument("--settings", choices=("paper", "grid"), default="paper",
                   help="(b) at the paper's two (L, N, B) or at all four of the grid")
    p.add_argument("--warmup", type=int, help="untimed steps, the first two included (default 10, --quick 2)")
    p.add_argument("--steps", type=int, help="timed steps (default 50, --quick 2)")
    p.add_argument("--max-step-s", type=float, default=10.0, help="skip a configuration whose step takes longer")
    p.add_argument("--max-state-mb", type=float,
                   help="(c) skip a decoding state larger than this (default: none on CUDA, 2048 on CPU)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench", help="output directory")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                   help="Grassmann implementations to run in (a) and (b) (default: all)")
    p.add_argument("--lengths", nargs="+", type=int, help=f"(a) at these L (default {' '.join(map(str, MIXER_LENGTHS))})")
    p.add_argument("--window", action="store_true",
                   help="the short-GPU-window cut: (a) and (b) only (the window times (c) as a step of "
                        "its own), (a) at L=4096 and 16384, fast and fused only, 3 warm-up and 10 timed "
                        "steps, --max-step-s 5 (explicit flags win)")
    args = p.parse_args(argv)
    if args.window:
        given = set(argv if argv is not None else sys.argv[1:])
        if "--impls" not in given:
            args.impls = ["fast", "fused"]
        args.lengths = args.lengths or [4096, 16384]
        args.warmup = 3 if args.warmup is None else args.warmup
        args.steps = 10 if args.steps is None else args.steps
        if "--max-step-s" not in given:
            args.max_step_s = 5.0
    args.parts = {args.only} if args.only else ({"mixer", "model"} if args.window else {"mixer", "model", "decode"})
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 50)
    if args.max_state_mb is None and args.device.startswith("cpu"):
        args.max_state_mb = 2048.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --device cpu (with --quick for a smoke test)", file=sys.stderr)
        return 2
    if args.compile_modes is None:
        modes = ["default", "reduce-overhead"] if device.type == "cuda" and not args.quick else []
    else:
        modes = [m for m in args.compile_modes if m != "none"]
    torch.manual_seed(0)
    env = environment(device)
    notes = [
        "bf16 autocast; median of timed steps after warm-up; CUDA events on GPU, wall clock on CPU",
        "peak_mb = torch.cuda.max_memory_allocated over the timed steps (None on CPU)",
        f"(a) B*L = {QUICK_TOKENS if args.quick else MIXER_TOKENS} tokens at every L",
    ]
    if args.only == "decode":  # no autocast, no fused rows in (c)
        notes = ["median of timed steps after warm-up; CUDA events on GPU, wall clock on CPU",
                 "peak_mb = torch.cuda.max_memory_allocated over the timed steps (None on CPU)"]
    if args.quick:
        notes.append("--quick: tiny sizes; the numbers only show that the script runs")
    reason = fused_skip_reason(device)
    if reason and args.only != "decode":
        notes.append(f"fused skipped: {reason}")
    result: dict[str, Any] = {
        "env": env,
        "config": {
            "quick": args.quick, "device": str(device), "warmup": args.warmup, "steps": args.steps,
            "compile_modes": modes, "settings": "quick" if args.quick else args.settings,
            "max_step_s": args.max_step_s, "max_state_mb": args.max_state_mb, "notes": notes,
        },
        "mixer": [], "model": [], "projection": None, "decode": [],
    }
    if "mixer" in args.parts:
        result["mixer"] = bench_mixer(args, device)
    if "model" in args.parts:
        result["model"] = bench_models(args, device, modes)
        result["projection"] = project_grid(result["model"])
    if "decode" in args.parts:
        notes.append("(c) decode: ms per token = median over the last steps before C; state_mb = the "
                     "KV cache / Grassmann window at C; paper preset, random weights, "
                     f"{'bf16' if device.type == 'cuda' else 'float32'} weights, no autocast")
        result["decode"] = bench_decode(args, device)

    args.out.mkdir(parents=True, exist_ok=True)
    # A decode-only run gets its own files, so it never replaces a full run's JSON of the same day.
    stem = args.out / f"{slug(env['device'])}-{env['date']}{'-decode' if args.only == 'decode' else ''}"
    result["plots"] = []
    if result["mixer"]:
        title = f"{env['device']}, {env['date']}: mixer layer vs SDPA attention"
        result["plots"] += plot(result["mixer"], title, stem)
    if result["decode"]:
        title = f"{env['device']}, {env['date']}: decoding, KV cache vs Grassmann window"
        decode_stem = stem if args.only == "decode" else stem.with_name(stem.name + "-decode")
        result["plots"] += plot_decode(result["decode"], title, decode_stem)
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"# Benchmark on {env['device']} ({env['date']}, torch {env['torch']}, triton {env['triton']}, "
          f"CUDA {env['cuda']}, git {(env['git_sha'] or '?')[:10]}{' dirty' if env['git_dirty'] else ''})\n")
    for note in notes:
        print(f"- {note}")
    if result["mixer"]:
        print("\n## (a) One mixing layer, forward + backward\n")
        print(mixer_tables(result["mixer"]))
    if result["model"]:
        print("## (b) Training step (forward + backward + fused AdamW)\n")
        print(model_table(result["model"]))
        print("## Projected WikiText-2 grid wall-clock\n")
        print(projection_table(result["projection"]))
    if result["decode"]:
        print("## (c) Generation: per-token latency and state at context C (Grassmann / Transformer)\n")
        print(decode_table(result["decode"]))
    print(f"wrote {json_path}" + "".join(f", {f}" for f in result.get("plots", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
