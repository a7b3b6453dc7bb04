#!/usr/bin/env bash
# scripts/gpu_window.sh: every GPU result of the project from one short GPU window.
#
#   DATA_DIR=data BUDGET_S=420 scripts/gpu_window.sh
#
# Works through STEPS below in priority order, each time-boxed, within BUDGET_S seconds
# in all (the final steps' time is reserved up front):
#   env        environment header (GPU, driver, torch, Triton, CUDA) -> outputs/<ts>/env.json
#   gpu_tests  pytest -m gpu ("no tests selected" is fine)            -> outputs/<ts>/pytest_gpu.log
#   benchmark  scripts/benchmark.py --window (CPU: its --quick smoke)  -> results/bench/<ts>/
#   grid       the reduced-corpus grid, packed (grassmann_flows.grid --window: paper settings, controls,
#              other (L, N), reproduction presets, ablations, SNLI from scratch), with a plan
#              estimated from one measured step per model shape         -> outputs/<ts>/<run>/
#   decode     scripts/benchmark.py --only decode: per-token latency and state size, KV cache
#              against the Grassmann window (CPU: its --quick smoke) -> results/bench/<ts>/decode/
#   analysis   analyze_best_results.py and visualize_results.py        -> outputs/<ts>/{analysis.md,images/}
#   summary    outputs/<ts>/SUMMARY.md: per step and per run wall-clock, step time, tokens/s,
#              and which runs were cut
#   record     scripts/make_record.py: results/records/<date>_<setting>/ and README's records table
# When the budget runs out, or on SIGTERM/SIGINT, the running step gets SIGTERM: training runs
# save last.pt and mark results.json "interrupted"; RESUME=1 in a later window continues them.
# The final steps still run. Everything written belongs in git except *.pt (ignored).
#
# Knobs: BUDGET_S [420], DATA_DIR [data], QUICK=1 (CPU smoke: QUICK grid, 2 runs at once),
# PATIENCE [3], SEEDS [0,1,2], WINDOW_STAGES [main,controls,pairs,presets,ablations,snli],
# RESUME=1, GPU_TESTS_S [120], BENCH_S [90], DECODE_S [60], SKIP_STEPS (comma-separated step
# names), RECORDS_DIR [results/records; QUICK=1: outputs/<ts>/records] and RECORDS_README
# [README.md] (where the record and its table go), and those of speedrun.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

START=$(date +%s)
# the command as run, with the knobs that shape it, for the record
COMMAND=""
for knob in DATA_DIR BUDGET_S QUICK SEEDS PATIENCE WINDOW_STAGES RESUME RUNS_PER_GPU EXTRA_ARGS SKIP_STEPS; do
  if [ -n "${!knob+set}" ]; then COMMAND+="$knob=$(printf '%q' "${!knob}") "; fi
done
COMMAND+="scripts/gpu_window.sh"
BUDGET_S="${BUDGET_S:-420}"
STAMP="$(date +%Y-%m-%d_%H-%M-%S)"
OUT="${OUT_ROOT:-outputs}/$STAMP"
BENCH_OUT="results/bench/$STAMP"
if [ "${QUICK:-0}" = 1 ]; then BENCH_OUT="$OUT/bench"; fi  # a smoke run's timings stay beside its outputs
mkdir -p "$OUT"
# DATA_DIR unset means data/ (the runs' default), which alone is filled from the hub when files are missing
export SNLI_MODE=scratch   # the window trains SNLI from scratch; it has no DistilBERT weights
export PATIENCE="${PATIENCE:-3}"  # on the reduced corpus the best epoch comes early
if [ "${QUICK:-0}" = 1 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  export RUNS_PER_GPU="${RUNS_PER_GPU:-2}"
fi
if [ "${QUICK:-0}" = 1 ] && [ -z "${RECORDS_DIR:-}" ]; then
  # a smoke run's record stays beside its outputs, out of results/records and README
  export RECORDS_DIR="$OUT/records" RECORDS_README="$OUT/records/README.md"
  mkdir -p "$RECORDS_DIR"
  printf '<!-- records:begin -->\n<!-- records:end -->\n' > "$RECORDS_README"
fi

# name, longest time (s; 0 = whatever is left after the reserve), function. More steps can be
# added anywhere in this list; FINAL_STEPS run even after a stop, their time kept in RESERVE_S.
STEPS=(
  "env        30                 step_env"
  "gpu_tests  ${GPU_TESTS_S:-120} step_gpu_tests"
  "benchmark  ${BENCH_S:-90}      step_benchmark"
  "grid       0                  step_grid"
  "decode     ${DECODE_S:-60}     step_decode"
  "analysis   60                 step_analysis"
  "summary    30                 step_summary"
  "record     30                 step_record"
)
FINAL_STEPS=" analysis summary record "
RESERVE_S=60
GRACE_S=30  # a stopped training run finishes its step and writes last.pt within this

left() { echo $(( START + BUDGET_S - $(date +%s) )); }

step_env() {
  "$PYTHON" - "$OUT/env.json" <<'EOF'
import json, sys
import torch
from grassmann_flows.utils.env import environment
env = environment()
env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
for k in ("gpus", "driver", "torch", "triton", "cuda", "git_sha", "git_dirty"):
    print(f"{k}: {env[k]}")
EOF
}

step_gpu_tests() {
  if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    echo "pytest is not installed: GPU tests skipped"; return 0
  fi
  "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 5 ]; then echo "no tests marked gpu in this checkout"; return 0; fi
  return "$rc"
}

step_benchmark() {  # three calls, each writing its own JSON, so a cut keeps what came before it
  if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$PYTHON" scripts/benchmark.py --quick --device cpu --window --compile-mode none --out "$BENCH_OUT/smoke"
    return
  fi
  "$PYTHON" scripts/benchmark.py --window --only mixer --out "$BENCH_OUT/mixer" \
    && "$PYTHON" scripts/benchmark.py --window --only model --compile-mode none --out "$BENCH_OUT/eager" \
    && "$PYTHON" scripts/benchmark.py --window --only model --compile-mode default --out "$BENCH_OUT/compiled"
}

step_decode() {  # generation needs no trained weights: random ones at the paper's sizes
  if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$PYTHON" scripts/benchmark.py --quick --device cpu --only decode --out "$BENCH_OUT/decode"
    return
  fi
  "$PYTHON" scripts/benchmark.py --only decode --out "$BENCH_OUT/decode"
}

step_grid() {  # $1: its time box; the queue stops itself GRACE_S before, the box is the backstop
  "$PYTHON" -m grassmann_flows.grid run --window --estimate --budget-s $(( $1 > 2 * GRACE_S ? $1 - GRACE_S : $1 / 2 )) \
    --out-dir "$OUT" --python "$PYTHON"
}

step_analysis() {  # with RESUME=1 the continued runs live in earlier windows' directories
  local runs="$OUT"
  if [ "${RESUME:-0}" = 1 ]; then runs="${OUT_ROOT:-outputs}"; fi
  local bench=() rc=0
  "$PYTHON" scripts/analyze_best_results.py "$runs" --out "$OUT" > "$OUT/analysis.md" || rc=$?
  cat "$OUT/analysis.md"
  # the benchmark's parts (mixer, eager, compiled) are read as one
  if ls "$BENCH_OUT"/*/*.json >/dev/null 2>&1; then bench=(--bench "$BENCH_OUT"); fi
  "$PYTHON" scripts/visualize_results.py "$runs" --out "$OUT/images" "${bench[@]}" || rc=$?
  return "$rc"
}

step_summary() {
  if [ -f "$OUT/queue.json" ]; then "$PYTHON" -m grassmann_flows.grid summary "$OUT" && cat "$OUT/SUMMARY.md"
  else echo "the grid wrote no queue.json: nothing to summarise"; return 1; fi
}

step_record() {  # the window's evidence, kept with the code (see README "Results")
  local bench=()
  if ls "$BENCH_OUT"/*/*.json >/dev/null 2>&1; then bench=(--bench "$BENCH_OUT"); fi
  "$PYTHON" scripts/make_record.py "$OUT" --command "$COMMAND" "${bench[@]}" \
    --records-dir "${RECORDS_DIR:-results/records}" --readme "${RECORDS_README:-README.md}"
}

STOPPED=""
CHILD=""
on_signal() {
  STOPPED="$1"
  if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null; fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

run_step() {  # run_step <name> <longest s> <function>: time-boxed, recorded in steps.tsv
  local name="$1" longest="$2" fn="$3" box t0 rc status reserve=0 stopped_before="$STOPPED"
  case "$FINAL_STEPS" in *" $name "*) ;; *) reserve=$RESERVE_S;; esac
  box=$(( $(left) - reserve ))
  if [ "$longest" -gt 0 ] && [ "$longest" -lt "$box" ]; then box=$longest; fi
  if [[ ",${SKIP_STEPS:-}," == *",$name,"* ]]; then status="skipped (SKIP_STEPS)"; box=0
  elif [ -n "$STOPPED" ] && [ "$reserve" -gt 0 ]; then status="skipped ($STOPPED)"; box=0
  elif [ "$box" -lt 5 ]; then status="skipped (no time left)"; box=0; fi
  t0=$(date +%s)
  if [ "$box" -gt 0 ]; then
    echo "=== [$name] up to ${box} s ($(left) s of the budget left)"
    # timeout sends TERM to the step at its box and KILLs it GRACE_S later; the training runs
    # of the grid step have their own sessions, out of its reach, and die with their queue
    timeout -s TERM -k "$GRACE_S" "$box" bash -c "$(declare -f "$fn"); $(declare -p OUT BENCH_OUT PYTHON GRACE_S COMMAND); $fn $box" &
    CHILD=$!
    wait "$CHILD"; rc=$?
    if [ -n "$STOPPED" ] && kill -0 "$CHILD" 2>/dev/null; then wait "$CHILD"; rc=$?; fi
    CHILD=""
    case "$rc" in 0) status=ok;; 124|137) status="cut at ${box} s";; *) status="failed (exit $rc)";; esac
    if [ -z "$stopped_before" ] && [ -n "$STOPPED" ] && [ "$rc" != 0 ]; then status="stopped ($STOPPED)"; fi
  fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
  echo "--- [$name] $status"
}

for entry in "${STEPS[@]}"; do
  read -r name longest fn <<< "$entry"
  run_step "$name" "$longest" "$fn"
done
echo "gpu_window: done in $(( $(date +%s) - START )) s of ${BUDGET_S}; outputs in $OUT and $BENCH_OUT"
echo "commit them with: git add $OUT $BENCH_OUT ${RECORDS_DIR:-results/records} ${RECORDS_README:-README.md}   (checkpoints *.pt are git-ignored)"
if [ -n "$STOPPED" ]; then exit 143; fi
