"""The run grid behind speedrun.sh and scripts/gpu_window.sh: plan it, check it once, run it as a queue.

    python -m grassmann_flows.grid run {grassmann|transformer|all} {wikitext|snli|all} [train|eval|both]
    python -m grassmann_flows.grid run --window --estimate --budget-s 300 --out-dir outputs/<ts>
    python -m grassmann_flows.grid summary outputs/<ts>        # SUMMARY.md of a queue's runs

The knobs come from the environment; speedrun.sh's header lists them. One place builds the
run list, checks every precondition once before the first run (arguments, data, tokenizer,
DistilBERT weights, checkpoints to resume) and fails with one line, then keeps
RUNS_PER_GPU training processes busy on every GPU (or on the CPU). Each run logs to its
own directory, its evaluation follows it, and failures are listed at the end.

The Transformer is the same model under every Grassmann preset unless a preset changes
it, so it is keyed by its resolved configuration: it is trained, and named, once under
the first preset (in `PRESETS` order) that resolves it to that configuration.
"""

# The docstring above is also `python -m grassmann_flows.grid --help`. The package, by stage:
# plan (the knobs and the run list), preflight (the checks before the first run, the time
# estimates), queue (the slots and the queue that runs them), summary (SUMMARY.md), cli.

from .cli import main, parser
from .plan import (ABLATIONS, CONTROLS, EVAL_MODULE, GRID_FLAGS, MODES, PAPER_SETTINGS, QUICK_ARGS, TRAIN_MODULE,
                   USAGE, WINDOW_STAGES, Knobs, Planner, PreflightError, Run, transformer_preset)
from .preflight import estimate, measure_step, newest, preflight
from .queue import CORES_PER_RUN, GPU_GIB_PER_RUN, MAX_RUNS_PER_GPU, Outcome, Queue, _mark_cut, plan_slots
from .summary import run_rows, write_summary

__all__ = ["ABLATIONS", "CONTROLS", "CORES_PER_RUN", "EVAL_MODULE", "GPU_GIB_PER_RUN", "GRID_FLAGS",
           "MAX_RUNS_PER_GPU", "MODES", "PAPER_SETTINGS", "QUICK_ARGS", "TRAIN_MODULE", "USAGE", "WINDOW_STAGES",
           "Knobs", "Outcome", "Planner", "PreflightError", "Queue", "Run", "_mark_cut", "estimate", "main",
           "measure_step", "newest", "parser", "plan_slots", "preflight", "run_rows", "transformer_preset",
           "write_summary"]
