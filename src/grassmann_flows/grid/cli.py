"""The command line: `python -m grassmann_flows.grid run|summary` (its help is the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..data.sources import REPO_ROOT
from . import __doc__ as GRID_DOC
from .plan import MODES, USAGE, WINDOW_STAGES, Knobs, Planner, PreflightError
from .preflight import estimate, preflight
from .queue import Queue, plan_slots
from .summary import _fmt_s, write_summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grassmann_flows.grid", description=GRID_DOC,
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


def smoke_analysis(stamp_dir: Path, python: str) -> str | None:
    """QUICK's last step, what a user runs after a grid: the tables (analysis.md, and the
    summary JSON) and the figures (images/) of its runs, in its folder. None, or a line
    naming what failed."""
    steps = {"analysis.md": ["analyze_best_results.py", str(stamp_dir), "--out", str(stamp_dir)],
             "figures.log": ["visualize_results.py", str(stamp_dir), "--out", str(stamp_dir / "images")]}
    for log, (script, *script_args) in steps.items():
        with open(stamp_dir / log, "w") as f:
            rc = subprocess.run([python, str(REPO_ROOT / "scripts" / script), *script_args], stdout=f,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            return f"scripts/{script} exited with {rc}; see {stamp_dir / log}"
    print(f"analysis: {stamp_dir / 'analysis.md'}, figures: {stamp_dir / 'images'}", flush=True)
    return None


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
    if knobs.quick:
        print("QUICK=1: a smoke run (tiny models, a few steps" + (
            f", the DistilBERT heads on a tiny random backbone in {knobs.distilbert_dir}" if knobs.quick_backbone
            and any(r.snli_mode == "distilbert" for r in runs) else "")
            + '); its results say "quick": true and are never compared with real runs', flush=True)
    deadline = t0 + args.budget_s if args.budget_s is not None else None
    queue = Queue(knobs, slots, args.mode, stamp_dir, args.python, deadline=deadline)
    estimates: dict[str, float | None] = {}
    if args.estimate:  # at most a fifth of the budget
        until = t0 + args.budget_s / 5 if args.budget_s is not None else float("inf")
        with queue.signals():
            estimates = estimate(runs, lambda: queue.stop_reason is None and time.time() < until)
    for i, run in enumerate(runs, 1):
        est = estimates.get(run.name)
        work = "its newest best.pt" if args.mode == "eval" else f"{run.steps} steps"
        print(f"  {i:3d}. [{run.stage}] {run.name}: {work}"
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
    if knobs.quick and not args.window and stamp_dir.is_dir():  # the GPU window analyses in a step of its own
        failed_step = smoke_analysis(stamp_dir, args.python)
        if failed_step:
            print(f"speedrun: QUICK's {failed_step}", file=sys.stderr)
            return 1
    # the folders that exist: eval and RESUME=1 runs live in earlier grids' folders
    where = sorted({Path(o.out_dir).parent for o in outcomes if o.out_dir}
                   | ({stamp_dir} if stamp_dir.is_dir() else set()))
    folder = where[0] if len(where) == 1 else knobs.out_root
    print(f"speedrun: done in {wall:.0f} s; outputs under {', '.join(map(str, where)) or 'nothing'} "
          f"(summary: python scripts/analyze_best_results.py {folder})")
    return 0
