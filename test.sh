#!/usr/bin/env bash
# Run the test suite (CPU). Creates .venv with the dev extras on the first run.
set -euo pipefail
cd "$(dirname "$0")"
EXTRAS="${EXTRAS:-dev,triton}"
source scripts/env.sh
exec "$PYTHON" -m pytest -q "$@"
