#!/usr/bin/env bash
# speedrun.sh: train and/or evaluate the Transformer and Grassmann models.
#
#   ./speedrun.sh {grassmann|transformer|all} {wikitext|snli|all} [train|eval|both]
#
# Environment knobs (defaults in brackets):
#   LAYER_DEPTHS_OVERRIDE [6,12]     WikiText-2 depths N
#   SEQ_LENS              [128,256]  WikiText-2 block sizes L (batch 32 at 128, 16 at 256)
#   SEEDS                 [0,1,2]    comma-separated seeds (three give a confidence interval)
#   LRS                   [6e-4 WikiText-2, 3e-4 SNLI] comma-separated learning rates, e.g. 3e-4,6e-4,1e-3
#   EPOCHS                [30 WikiText-2, 20 SNLI]
#   PRESET                [paper]    paper | preln_all_offsets | preln_per_layer, or several comma-separated
#   CONTROLS              [1 with PRESET paper] 0|1: add a post-LN Transformer (--opt block=postln, tag
#                                    postln) and a Grassmann without the extra projection (--opt
#                                    extra_proj=none, tag noextra) after the main WikiText-2 runs
#   MIXER_IMPL            [fast]     naive | fast | fused
#   PATIENCE              [off]      stop a run after this many evaluations without a validation improvement
#   SNLI_MODE             [distilbert] distilbert (the paper's heads on frozen DistilBERT) | scratch
#   DISTILBERT_DIR        [hub]      local copy of distilbert-base-uncased (else the HF cache / the hub)
#   SNLI_LAYERS           [6]        depth of the from-scratch SNLI encoders
#   DATA_DIR              [./data]   local data (layout: see docs/running.md); only ./data is fetched from the hub
#                                    when missing: a DATA_DIR you set must hold the files
#   OUT_ROOT              [outputs]  where outputs/<timestamp>/<run>/ go
#   CACHE_DIR             [./cache]  tokenised splits and the shared torch.compile / Triton cache
#   QUICK=1               the smoke run: the same grid (main runs, controls, SNLI heads, evaluation)
#                                    on tiny models (d_model 16-32, N=2, L=32, seed 0, 2 epochs of 3 steps,
#                                    the heads on a tiny random DistilBERT unless DISTILBERT_DIR is set),
#                                    two at once, then the analysis and figures into the grid's folder; a
#                                    few minutes on a laptop CPU. Knobs you set win; results say "quick": true
#   RESUME=1              continue each run from its newest last.pt (a finished run is only evaluated)
#   RUNS_PER_GPU          [auto on GPUs, 1 on the CPU] training processes at once per GPU (or on the CPU)
#   NPROC                 [1] >1: each run is one torchrun DDP job over NPROC GPUs
#   PARALLEL_RUNS         older spelling of RUNS_PER_GPU=1 on that many GPUs
#   TAG                   suffix of the run names (ablations), e.g. TAG=nonorm
#   EXTRA_ARGS            passed to every train command, e.g. "--opt normalize=false"
# The grid is planned, checked and run by src/grassmann_flows/grid/: every precondition is
# checked once before the first run, each run logs to <run>/train.log, its evaluation follows it.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
  echo "See the header of speedrun.sh for the environment knobs." >&2
  exit 2
}
# Checked before env.sh, so that a typo never waits for a first-run install.
case "${1:-}" in grassmann|transformer|all) ;; *) echo "error: unknown model '${1:-}'" >&2; usage;; esac
case "${2:-}" in wikitext|snli|all) ;; *) echo "error: unknown dataset '${2:-}'" >&2; usage;; esac
case "${3:-both}" in train|eval|both) ;; *) echo "error: unknown mode '${3}'" >&2; usage;; esac
[ $# -le 3 ] || { echo "error: too many arguments" >&2; usage; }

source scripts/env.sh
exec "$PYTHON" -m grassmann_flows.grid run "$@" --python "$PYTHON"
