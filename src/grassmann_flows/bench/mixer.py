"""(a) One mixing layer, forward + backward under bf16 autocast, against attention.

The paper's GrassmannMixer (r = 32, offsets {1,2,4,8,12,16}, d = 256) with mixer_impl naive /
fast / fused, and a causal SDPA self-attention layer (d = 256, 4 heads), at L in
{256, ..., 32768} with B * L = 32768 tokens, so every point does the same token work.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..models import resolve_config
from ..models.attention import SelfAttention
from ..models.mixer import GrassmannMixer
from .timing import cell, fused_skip_reason, guarded, measure, progress, ratio, save_figure

IMPLS = ("naive", "fast", "fused")
LAYERS = ("attention",) + tuple(f"grassmann-{impl}" for impl in IMPLS)
# Sequence lengths at a fixed token count, so every point does the same token work.
MIXER_LENGTHS = (256, 1024, 4096, 16384, 32768)
MIXER_TOKENS = 32768
MIXER_DIMS = {"d_model": 256, "n_heads": 4, "reduced_dim": 32}
# --quick: sizes that run in seconds on a CPU; the numbers only show the script works.
QUICK_LENGTHS = (16, 64)
QUICK_TOKENS = 128
QUICK_MIXER_DIMS = {"d_model": 64, "n_heads": 4, "reduced_dim": 8}


def bench_mixer(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """One row per (L, layer): attention and each of `args.impls`."""
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
            progress("mixer", row)
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
        if layer.mixer_impl != impl:
            return {"skipped": f"mixer_impl={impl!r} resolved to {layer.mixer_impl!r}"}
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


def mixer_tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: ms and peak MB per L and layer, and each Grassmann layer over attention."""
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
            cells = [str(L), str(attn["B"] if attn else "")] + [cell(attn, key, spec)]
            cells += [cell(by.get((L, n)), key, spec) for n in g_layers]
            cells += [ratio(by.get((L, n)), attn, key) for n in g_layers]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    reasons = {
        f"{r['layer']} at L={r['L']}: {r.get('skipped') or r['error']}": None for r in rows if "ms" not in r
    }
    return "\n".join(lines + [f"- {reason}" for reason in reasons]) + "\n"



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
    return save_figure(fig, title, stem)

