# Sourced by speedrun.sh and test.sh: use $PYTHON if set, else the repo's .venv, creating
# it and installing the project (with the optional groups in EXTRAS) the first time.
#   TORCH_SPEC  what pip installs for torch when the venv has none (default "torch>=2.4")
#   EXTRAS      optional groups of the project, e.g. "dev,triton" (test.sh)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  VENV="${VENV:-$REPO_ROOT/.venv}"
  MARK="$VENV/.grassmann-flows-ready-${EXTRAS:-base}"  # one per set of extras
  if [ ! -f "$MARK" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
      echo "[env] first run: creating $VENV" >&2
      python3 -m venv "$VENV" || { echo "error: could not create a virtual environment with python3 -m venv" >&2; exit 1; }
      "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    fi
    echo "[env] installing the project${EXTRAS:+ with [$EXTRAS]} into $VENV (once)" >&2
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch>=2.4}" >&2 \
      || { echo "error: installing torch failed" >&2; exit 1; }
    "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT${EXTRAS:+[$EXTRAS]}" >&2 \
      || { echo "error: installing the project failed" >&2; exit 1; }
    touch "$MARK"
  fi
  PYTHON="$VENV/bin/python"
fi
export PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
