#!/usr/bin/env bash
# speedrun.sh: train and/or evaluate the Transformer and Grassmann models.
#
#   ./speedrun.sh {grassmann|transformer|all} {wikitext|snli|all} [train|eval|both]
#
# Environment knobs (defaults in brackets):
#   LAYER_DEPTHS_OVERRIDE [6,12]   WikiText-2 depths N
#   SEQ_LENS              [128,256] WikiText-2 block sizes L (batch 32 at 128, 16 at 256)
#   SEEDS                 [0]      comma-separated seeds
#   EPOCHS                [30 WikiText-2, 20 SNLI]
#   PRESET                [paper]  paper | preln_all_offsets | preln_per_layer
#   MIXER_IMPL            [fast]   naive | fast | fused
#   SNLI_MODE             [scratch] scratch (encoder over the pair) | distilbert (paper's heads)
#   SNLI_LAYERS           [6]      depth of the from-scratch SNLI encoders
#   DATA_DIR              [./data] local data (layout: see README); fetched from the hub if missing
#   OUT_ROOT              [outputs] where outputs/<timestamp>/<run>/ go
#   QUICK=1               a few steps on tiny settings: the CPU smoke run
#   RESUME=1              continue each run from its newest last.pt
#   NPROC                 [1] >1: one torchrun --standalone DDP job per run on NPROC GPUs
#   PARALLEL_RUNS         [1] >1: that many training runs at once, one GPU each, logs in <run>/train.log
#                         (the evals follow); see docs/reliability.md
#   TAG                   suffix of the run names (ablations), e.g. TAG=nonorm
#   EXTRA_ARGS            passed to every train command, e.g. "--opt normalize=false"
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "See the header of speedrun.sh for the environment knobs." >&2
  exit 2
}

MODEL="${1:-}"; DATASET="${2:-}"; MODE="${3:-both}"
case "$MODEL" in grassmann|transformer) MODELS="$MODEL";; all) MODELS="transformer grassmann";;
  *) echo "error: unknown model '${MODEL}'" >&2; usage;; esac
case "$DATASET" in wikitext|snli) DATASETS="$DATASET";; all) DATASETS="wikitext snli";;
  *) echo "error: unknown dataset '${DATASET}'" >&2; usage;; esac
case "$MODE" in train|eval|both) ;; *) echo "error: unknown mode '${MODE}'" >&2; usage;; esac
[ $# -le 3 ] || { echo "error: too many arguments" >&2; usage; }
SNLI_MODE="${SNLI_MODE:-scratch}"
case "$SNLI_MODE" in scratch|distilbert) ;; *) echo "error: SNLI_MODE must be scratch or distilbert" >&2; exit 2;; esac

source scripts/env.sh

IFS=',' read -r -a DEPTHS <<< "${LAYER_DEPTHS_OVERRIDE:-6,12}"
IFS=',' read -r -a LENS <<< "${SEQ_LENS:-128,256}"
IFS=',' read -r -a SEED_LIST <<< "${SEEDS:-0}"
SNLI_LAYERS="${SNLI_LAYERS:-6}"
OUT_ROOT="${OUT_ROOT:-outputs}"
STAMP="$(date +%Y-%m-%d_%H-%M-%S)"
COMMON=(--preset "${PRESET:-paper}")
SUFFIX=""
if [ -n "${TAG:-}" ]; then SUFFIX="_$TAG"; COMMON+=(--tag "$TAG"); fi
if [ -n "${DATA_DIR:-}" ]; then COMMON+=(--data-dir "$DATA_DIR"); fi
if [ -n "${EPOCHS:-}" ]; then COMMON+=(--epochs "$EPOCHS"); fi
if [ -n "${MIXER_IMPL:-}" ]; then COMMON+=(--mixer-impl "$MIXER_IMPL"); fi
if [ "${QUICK:-0}" = 1 ]; then
  COMMON+=(--max-steps-per-epoch 3 --eval-max-batches 2 --batch-size 4 --warmup-steps 1 --log-every 1)
  if [ -z "${EPOCHS:-}" ]; then COMMON+=(--epochs 1); fi
fi
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
LAUNCH=("$PYTHON" -m)
if [ "${NPROC:-1}" -gt 1 ]; then
  LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m)
fi
PARALLEL_RUNS="${PARALLEL_RUNS:-1}"
if [ "$PARALLEL_RUNS" -gt 1 ] && [ "${NPROC:-1}" -gt 1 ]; then
  echo "error: set NPROC (GPUs per run) or PARALLEL_RUNS (runs at once, one GPU each), not both" >&2; exit 2
fi

FAILED=()
run() {  # run <label> <command...>: keep going on failure, report at the end
  local label="$1"; shift
  echo "=== $label: $*"
  if ! "$@"; then FAILED+=("$label"); echo "!!! $label failed" >&2; fi
}

# PARALLEL_RUNS > 1: the training runs go to the background, at most one per GPU; the
# evals wait for the end, as they need their run's best.pt.
declare -A BG_LABEL=()  # pid -> label of each background run not yet reaped
SLOT_PIDS=()            # GPU index -> pid of the run last started on it
DEFERRED_EVALS=()       # eval_cmd arguments, shell-quoted
reap() {  # reap: wait for one background run to end; record it if it failed (bash >= 5.1)
  local pid status=0
  wait -n -p pid || status=$?
  [ -n "${pid:-}" ] || return 0
  if [ "$status" -ne 0 ]; then FAILED+=("${BG_LABEL[$pid]}"); echo "!!! ${BG_LABEL[$pid]} failed (exit $status)" >&2; fi
  unset "BG_LABEL[$pid]"
}
run_bg() {  # run_bg <label> <log file> <command...>: on the first free GPU, output to the log
  local label="$1" log="$2" gpu; shift 2
  while :; do  # a GPU is free once the run on it has been reaped
    for ((gpu = 0; gpu < PARALLEL_RUNS; gpu++)); do
      if [ -z "${BG_LABEL[${SLOT_PIDS[$gpu]:-none}]:-}" ]; then break 2; fi
    done
    reap
  done
  mkdir -p "$(dirname "$log")"
  echo "=== $label (GPU $gpu, log $log): $*"
  CUDA_VISIBLE_DEVICES="$gpu" "$@" >> "$log" 2>&1 &
  SLOT_PIDS[$gpu]=$!
  BG_LABEL[$!]="$label"
}
stop_bg() {  # stop_bg <exit code>: pass a stop on to the runs (each saves its last.pt), wait, exit
  kill -TERM "${!BG_LABEL[@]}" 2>/dev/null || true
  wait
  exit "$1"
}
if [ "$PARALLEL_RUNS" -gt 1 ]; then
  # Background jobs of a script ignore SIGINT until training installs its handler, and a
  # TERM to this script would not reach them: forward both as TERM.
  trap 'stop_bg 130' INT
  trap 'stop_bg 143' TERM
fi

newest() {  # newest <run name> <file>: newest outputs/*/<run name>/<file>, or nothing
  { ls -1d "$OUT_ROOT"/*/"$1"/"$2" 2>/dev/null || true; } | sort | tail -n 1
}

train_cmd() {  # train_cmd <run name> <module> <args...>
  local name="$1" module="$2"; shift 2
  local out="$OUT_ROOT/$STAMP/$name" resume=()
  if [ "${RESUME:-0}" = 1 ]; then
    local last; last="$(newest "$name" last.pt)"
    if [ -n "$last" ]; then out="$(dirname "$last")"; resume=(--resume); echo "resuming $name from $last"; fi
  fi
  local cmd=("${LAUNCH[@]}" "$module" "$@" "${COMMON[@]}" "${EXTRA[@]}" --out-dir "$out" "${resume[@]}")
  if [ "$PARALLEL_RUNS" -gt 1 ]; then
    run_bg "train $name" "$out/train.log" "${cmd[@]}"
  else
    run "train $name" "${cmd[@]}"
  fi
}

eval_cmd() {  # eval_cmd <run name> <module> <expect args...>
  if [ "$PARALLEL_RUNS" -gt 1 ] && [ -z "${EVAL_NOW:-}" ]; then
    DEFERRED_EVALS+=("$(printf '%q ' "$@")"); return
  fi
  local name="$1" module="$2"; shift 2
  local ckpt; ckpt="$(newest "$name" best.pt)"
  if [ -z "$ckpt" ]; then
    echo "error: no $OUT_ROOT/*/$name/best.pt to evaluate (train it first: mode train or both)" >&2
    FAILED+=("eval $name"); return
  fi
  echo "evaluating the newest checkpoint of $name: $ckpt"
  local data=() quick=()
  if [ -n "${DATA_DIR:-}" ]; then data=(--data-dir "$DATA_DIR"); fi
  if [ "${QUICK:-0}" = 1 ]; then quick=(--max-batches 2); fi
  run "eval $name" "$PYTHON" -m "$module" "$ckpt" "$@" "${data[@]}" "${quick[@]}"
}

for seed in "${SEED_LIST[@]}"; do
  for dataset in $DATASETS; do
    for model in $MODELS; do
      if [ "$dataset" = wikitext ]; then
        for n in "${DEPTHS[@]}"; do
          for L in "${LENS[@]}"; do
            name="${model}_wikitext_L${L}_N${n}_s${seed}${SUFFIX}"
            if [ "$MODE" != eval ]; then
              train_cmd "$name" grassmann_flows.train --model "$model" --seq-len "$L" --n-layers "$n" --seed "$seed"
            fi
            if [ "$MODE" != train ]; then
              eval_cmd "$name" grassmann_flows.eval_wikitext --expect "model=$model" --expect "seq_len=$L" --expect "n_layers=$n"
            fi
          done
        done
      else
        if [ "$SNLI_MODE" = distilbert ]; then
          name="${model}_snli_distilbert_s${seed}${SUFFIX}"
          args=(--mode distilbert --model "$model" --seed "$seed")
        else
          name="${model}_snli_L128_N${SNLI_LAYERS}_s${seed}${SUFFIX}"
          args=(--model "$model" --n-layers "$SNLI_LAYERS" --seed "$seed")
        fi
        if [ "$MODE" != eval ]; then train_cmd "$name" grassmann_flows.train_snli "${args[@]}"; fi
        if [ "$MODE" != train ]; then eval_cmd "$name" grassmann_flows.eval_snli --expect "model=$model"; fi
      fi
    done
  done
done

if [ "$PARALLEL_RUNS" -gt 1 ]; then
  while [ ${#BG_LABEL[@]} -gt 0 ]; do reap; done
  EVAL_NOW=1
  for call in "${DEFERRED_EVALS[@]}"; do eval "eval_cmd $call"; done
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "speedrun: ${#FAILED[@]} step(s) failed: ${FAILED[*]}" >&2
  exit 1
fi
echo "speedrun: done; outputs under $OUT_ROOT/$STAMP (summary: python scripts/analyze_best_results.py $OUT_ROOT/$STAMP)"
