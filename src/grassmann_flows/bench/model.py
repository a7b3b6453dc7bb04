"""(b) Whole training steps, and the WikiText-2 grid's wall-clock projected from them.

Forward + backward + fused AdamW step under bf16 autocast, on random tokens (BERT vocabulary,
30,522), of the Transformer and the Grassmann LM (naive / fast / fused) at the paper's settings
(L=128, N=6, B=32) and (L=256, N=12, B=16), eager and under torch.compile. Each model is the one
`python -m grassmann_flows.train --model M --seq-len L --n-layers N --batch-size B` trains.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from .. import train
from ..spec import RunSpec, spec_from_args
from .mixer import IMPLS
from .timing import fmt, fused_skip_reason, guarded, measure, progress, ratio

MODELS = ("transformer",) + tuple(f"grassmann-{impl}" for impl in IMPLS)
# (L, N, B). The paper trains L=128 with N=6, B=32 and L=256 with N=12, B=16.
PAPER_SETTINGS = ((128, 6, 32), (256, 12, 16))
GRID_SETTINGS = PAPER_SETTINGS + ((128, 12, 32), (256, 6, 16))
# The WikiText-2 grid the projection prices: both models at every (L, N), 30 epochs.
GRID_RUNS = tuple((L, N, B) for L, B in ((128, 32), (256, 16)) for N in (6, 12))
EPOCHS = 30
# WikiText-2 train split in bert-base-uncased tokens, estimated (no committed run has counted
# it yet): its 2,088,628 words x the 1.116 BERT tokens per word of the validation split.
TRAIN_TOKENS_PER_EPOCH = 2.33e6
# --quick: sizes that run in seconds on a CPU; the numbers only show the script works.
QUICK_SETTINGS = ((32, 2, 2),)
QUICK_MODEL_OPTIONS = {"d_model": 64, "n_heads": 4, "d_ff": 128, "reduced_dim": 8}
QUICK_VOCAB = 1000


def bench_models(args: argparse.Namespace, device: torch.device, modes: list[str]) -> list[dict[str, Any]]:
    """One row per (setting, model, mode): eager and each torch.compile mode in `modes`."""
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
                progress("model", row)
    return rows


def _model_point(
    args: argparse.Namespace, device: torch.device, impl: str | None, mode: str,
    L: int, N: int, B: int, extra: dict[str, Any],
) -> dict[str, Any]:
    spec = train_spec("transformer" if impl is None else "grassmann", impl, L, N, B, extra)
    model = spec.build().to(device).train()
    if impl is not None and any(block.mixer.mixer_impl != impl for block in model.backbone.blocks):
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


def train_spec(kind: str, impl: str | None, L: int, N: int, B: int, options: dict[str, Any]) -> RunSpec:
    """The run `train --model kind --seq-len L --n-layers N --batch-size B [--mixer-impl impl]
    [--opt k=v ...]` would train; random tokens from QUICK_VOCAB with `options` (--quick)."""
    argv = ["--model", kind, "--seq-len", str(L), "--n-layers", str(N), "--batch-size", str(B),
            *(["--mixer-impl", impl] if impl else []), *[x for k, v in options.items() for x in ("--opt", f"{k}={v}")]]
    return replace(spec_from_args("wikitext", train.parser().parse_args(argv)),
                   vocab_size=QUICK_VOCAB if options else None)


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



def model_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per training-step row, with its step time over the Transformer's."""
    ref = {(r["L"], r["N"], r["mode"]): r for r in rows if r["model"] == "transformer"}
    head = ["L", "N", "B", "model", "mode", "ms/step", "tokens/s", "peak MB", "first step s", "× transformer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: dict[str, None] = {}
    for r in rows:
        cells = [str(r["L"]), str(r["N"]), str(r["B"]), r["model"], r["mode"]]
        if "ms" in r:
            same_mode = ref.get((r["L"], r["N"], r["mode"]))
            cells += [
                fmt(r["ms"]), fmt(r["tokens_per_s"], ",.0f"), fmt(r["peak_mb"], ".0f"),
                fmt(r["first_step_s"], ".1f"), "" if r["model"] == "transformer" else ratio(r, same_mode, "ms"),
            ]
        else:
            status = "skipped" if "skipped" in r else "error"
            reasons[f"{status}: {r.get('skipped') or r.get('error')}"] = None
            cells += [status, "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {reason}" for reason in reasons]) + "\n"


def projection_table(proj: dict[str, Any]) -> str:
    """Markdown: the projected hours of each grid run and the totals (`project_grid`)."""
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

