"""Step time and peak memory of the Grassmann mixer (naive / fast / fused) against SDPA attention.

    python scripts/benchmark.py                           # current GPU, everything below
    python scripts/benchmark.py --only mixer              # (a) only
    python scripts/benchmark.py --compile-mode none       # (b) eager only
    python scripts/benchmark.py --settings grid           # (b) at all four (L, N) of the WT2 grid
    python scripts/benchmark.py --quick --device cpu      # smoke test: tiny sizes, few steps
    python scripts/benchmark.py --only decode --device cpu  # (c) only, on the CPU

(a) one mixing layer, forward + backward (`bench/mixer.py`); (b) whole training steps, eager
and under torch.compile (--compile-mode, default "default reduce-overhead"), and the
WikiText-2 grid's projected wall-clock (`bench/model.py`); (c) generation, one token per
step (`bench/decode.py`), written to <gpu-slug>-<YYYY-MM-DD>-decode.json / .png / .svg with
--only decode. --window is the short-GPU-window plan (`window_plan`).

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
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..data.sources import REPO_ROOT
from ..utils.env import environment
from ..hf.bench import generate_table
from .decode import GENERATE_SUFFIX, bench_decode, decode_table, plot_decode
from .mixer import IMPLS, MIXER_LENGTHS, MIXER_TOKENS, QUICK_TOKENS, bench_mixer, mixer_tables, plot
from .model import bench_models, model_table, project_grid, projection_table
from .timing import fused_skip_reason, slug



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with --window's plan and the defaults that depend on --quick and --device applied."""
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
        window_plan(args, set(argv if argv is not None else sys.argv[1:]))
    args.parts = {args.only} if args.only else ({"mixer", "model"} if args.window else {"mixer", "model", "decode"})
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 50)
    if args.max_state_mb is None and args.device.startswith("cpu"):
        args.max_state_mb = 2048.0
    return args


def window_plan(args: argparse.Namespace, given: set[str]) -> None:
    """The short-GPU-window cut (scripts/gpu_window.sh): (a) at L=4096 and 16384, fast and
    fused only, 3 warm-up and 10 timed steps, --max-step-s 5; the flags in `given` win."""
    if "--impls" not in given:
        args.impls = ["fast", "fused"]
    args.lengths = args.lengths or [4096, 16384]
    args.warmup = 3 if args.warmup is None else args.warmup
    args.steps = 10 if args.steps is None else args.steps
    if "--max-step-s" not in given:
        args.max_step_s = 5.0


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
        print("## (c) The project's loop and transformers' .generate(), same positions and state\n")
        print(generate_table(result["decode"], GENERATE_SUFFIX))
    print(f"wrote {json_path}" + "".join(f", {f}" for f in result.get("plots", [])))
    return 0
