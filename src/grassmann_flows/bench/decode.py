"""(c) Generation, one token per step: per-token latency and the decoding state's size.

The Transformer LM (KV cache) and the Grassmann LM (window of the last max|offset| reduced
vectors per layer) at context C, batch 1 and 32, paper preset, N = 12, random weights (speed
needs no trained weights). C runs up to n_positions = 256, and to 16,384 for a model built with
a 16,384-row position table. The state is filled with random values up to C - warmup - steps;
the timed steps are the last ones before C (a step's cost does not depend on the values, and a
real prefill of 16K tokens at batch 32 would dominate the run). Memory is the state's size at C
(both devices) and the peak allocated (CUDA). bf16 weights on CUDA, float32 on the CPU. A state
over --max-state-mb is skipped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..models import build_model
from ..models.attention import KVCache
from .model import QUICK_MODEL_OPTIONS
from .timing import cell, guarded, measure, progress, ratio, save_figure

# The model of the L=256, N=12 setting, its contexts, and a long-context model.
DECODE_OPTIONS = {"n_layers": 12, "n_positions": 256}
DECODE_CONTEXTS = (16, 64, 256)
LONG_POSITIONS = 16384
LONG_CONTEXTS = (1024, 4096, 16384)
DECODE_BATCHES = (1, 32)
# --quick: sizes that run in seconds on a CPU; the numbers only show the script works.
LINESTYLES = ("-", "--", ":", "-.")  # one per decoder in the figure
QUICK_DECODE = {"n_layers": 2, "n_positions": 32, "contexts": (8, 32), "long_positions": 128, "long_contexts": (128,)}


@dataclass(frozen=True)
class Decoder:
    """One timed way of generating: a row per (n_positions, B, C), labelled `name`.

    build(n_positions, n_layers, options, device, dtype): its model with random weights, once per table.
    state_mb(model, B, C): its decoding state's size at context C, checked against --max-state-mb
        before anything is timed.
    point(args, device, model, B, C): `measure`'s row for the last steps before C, with
        "state_mb" and "tokens_per_s".
    """

    name: str
    build: Callable[[int, int, dict[str, Any], torch.device, torch.dtype], Any]
    state_mb: Callable[[Any, int, int], float]
    point: Callable[[argparse.Namespace, torch.device, Any, int, int], dict[str, Any]]


def _paper_lm(kind: str) -> Callable[[int, int, dict[str, Any], torch.device, torch.dtype], Any]:
    def build(n_positions: int, n_layers: int, options: dict[str, Any], device: torch.device,
              dtype: torch.dtype) -> Any:
        model = build_model(kind, "paper", **options, n_layers=n_layers, n_positions=n_positions)
        return model.to(device=device, dtype=dtype).eval()

    return build


def bench_decode(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Per-token latency and state memory of each of `DECODERS` at each context C."""
    extra = QUICK_MODEL_OPTIONS if args.quick else {}
    n_layers = QUICK_DECODE["n_layers"] if args.quick else DECODE_OPTIONS["n_layers"]
    tables = (
        (QUICK_DECODE["n_positions"], QUICK_DECODE["contexts"]), (QUICK_DECODE["long_positions"], QUICK_DECODE["long_contexts"])
    ) if args.quick else ((DECODE_OPTIONS["n_positions"], DECODE_CONTEXTS), (LONG_POSITIONS, LONG_CONTEXTS))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for n_positions, contexts in tables:
        for decoder in DECODERS:
            torch.manual_seed(0)
            model = decoder.build(n_positions, n_layers, extra, device, dtype)
            for B in DECODE_BATCHES:
                for C in contexts:
                    row: dict[str, Any] = {"model": decoder.name, "n_positions": n_positions, "N": n_layers,
                                           "B": B, "C": C, "dtype": str(dtype).removeprefix("torch.")}
                    mb = decoder.state_mb(model, B, C)
                    if args.max_state_mb is not None and mb > args.max_state_mb:
                        row["skipped"] = f"state of {mb:.0f} MB > --max-state-mb {args.max_state_mb:g}"
                    else:
                        row.update(guarded(lambda: decoder.point(args, device, model, B, C), device))
                    rows.append(row)
                    progress("decode", row)
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
    for layer in state.layers:
        if isinstance(layer, KVCache):
            layer.k[:, :, :n].normal_()
            layer.v[:, :, :n].normal_()
            layer.length = n
        else:
            layer.z.normal_()
            layer.seen = n
    state.position = n


def _hf_generate_point(args: argparse.Namespace, device: torch.device, model: torch.nn.Module,
                       B: int, C: int) -> dict[str, Any]:
    """transformers' greedy `.generate()` over the positions `_decode_point` times, from a state
    filled the same way (`hf/bench.py`); transformers is imported only when this row runs."""
    from ..hf.bench import generate_point

    return generate_point(model, B, C, min(args.steps, max(1, C // 2)), _fill_state)


# The decoders timed, in table order; the ratios are against REFERENCE. Each model is timed
# through the project's own loop and through transformers' `.generate()` (GENERATE_SUFFIX).
KINDS = ("transformer", "grassmann")
GENERATE_SUFFIX = " .generate()"
DECODERS = [*(Decoder(kind, _paper_lm(kind), _state_mb, _decode_point) for kind in KINDS),
            *(Decoder(kind + GENERATE_SUFFIX, _paper_lm(kind), _state_mb, _hf_generate_point) for kind in KINDS)]
REFERENCE = "transformer"


def decode_table(rows: list[dict[str, Any]]) -> str:
    """Per-token ms, state MB and peak MB of every decoder at each (n_positions, B, C), with
    each decoder's ms over REFERENCE's and REFERENCE's state over each decoder's."""
    # transformers' .generate() rows are set against their own model's loop in `hf.bench.generate_table`
    names = [d.name for d in DECODERS if not d.name.endswith(GENERATE_SUFFIX) and any(r["model"] == d.name for r in rows)]
    others = [n for n in names if n != REFERENCE]
    ref = REFERENCE.capitalize()
    by = {(r["n_positions"], r["B"], r["C"], r["model"]): r for r in rows}
    head = ["n_positions", "B", "C", *[f"{n} ms/token" for n in names],
            *[f"{n.capitalize()} / {ref} ms" for n in others], *[f"{n} state MB" for n in names],
            *[f"{ref} / {n.capitalize()} state" for n in others], *[f"{n} peak MB" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n_pos, B, C in sorted({(r["n_positions"], r["B"], r["C"]) for r in rows}):
        row = {n: by.get((n_pos, B, C, n)) for n in names}
        t = row.get(REFERENCE)
        lines.append("| " + " | ".join([
            str(n_pos), str(B), str(C), *[cell(row[n], "ms", ".2f") for n in names],
            *[ratio(row[n], t, "ms") for n in others], *[cell(row[n], "state_mb", ".3f") for n in names],
            *[ratio(t, row[n], "state_mb") for n in others], *[cell(row[n], "peak_mb", ".0f") for n in names],
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
        for i, decoder in enumerate(DECODERS):
            for B in DECODE_BATCHES:
                pts = sorted((r["C"], r[key]) for r in rows
                             if (r["model"], r["B"]) == (decoder.name, B) and r.get(key) is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", linestyle=LINESTYLES[i % len(LINESTYLES)],
                            label=f"{decoder.name} B={B}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context C (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_figure(fig, title, stem)

