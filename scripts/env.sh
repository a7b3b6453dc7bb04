# Sourced by speedrun.sh, test.sh and scripts/gpu_window.sh: sets $PYTHON.
#
# $PYTHON if set is used as it is. Otherwise the repo's .venv, made the first time:
#   - python3 can import torch (a GPU machine's system torch, offline): the venv is made
#     with --system-site-packages and nothing is downloaded. Only a package that is still
#     missing is pip-installed; if pip cannot get it, one line names it.
#   - python3 has no torch: a plain venv, then torch (TORCH_SPEC) and the project with its
#     dependencies from PyPI. On Linux with no NVIDIA GPU visible (no working `nvidia-smi -L`,
#     no /dev/nvidia0) torch is the CPU build, from PyTorch's CPU index (a few hundred MB
#     instead of the CUDA build's ~6 GB of libraries); if that index cannot be reached, the
#     default build from PyPI as before.
# The project itself is always importable through PYTHONPATH=src.
#   TORCH_SPEC       what pip installs for torch when there is none (default "torch>=2.4")
#   TORCH_INDEX_URL  where torch comes from: unset = the automatic choice above; set to an
#                    index URL to use it (e.g. https://download.pytorch.org/whl/cu124), or to
#                    "" for PyPI's default build whatever the machine
#   EXTRAS      optional groups of the project, e.g. "dev,triton" (test.sh)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_env_missing() {  # _env_missing <python> <module...>: print those of the modules it cannot import
  "$1" - "${@:2}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

_env_torch_index() {  # the index torch is installed from (empty: pip's default, i.e. PyPI)
  if [ -n "${TORCH_INDEX_URL+set}" ]; then echo "$TORCH_INDEX_URL"; return; fi
  [ "$(uname -s)" = Linux ] || return 0  # elsewhere PyPI's torch has no CUDA libraries anyway
  if { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || [ -e /dev/nvidia0 ]; then
    return 0  # an NVIDIA GPU: the default (CUDA) build
  fi
  echo "$TORCH_CPU_INDEX"
}

_env_install_torch() {  # _env_install_torch <python> <log>: torch from _env_torch_index, else the default index
  local py="$1" log="$2" spec="${TORCH_SPEC:-torch>=2.4}" index
  index="$(_env_torch_index)"
  if [ -n "$index" ]; then
    echo "[env] installing $spec from $index" >&2
    echo "\$ pip install $spec --index-url $index" >>"$log"
    "$py" -m pip install -q "$spec" --index-url "$index" >>"$log" 2>&1 && return 0
    echo "[env] $index could not serve $spec (see $log); trying the default index" >&2
  fi
  echo "\$ pip install $spec" >>"$log"
  "$py" -m pip install -q "$spec" >>"$log" 2>&1
}

_env_setup() {  # _env_setup <venv>: create it and install what is missing (once per set of extras)
  local venv="$1" py="$1/bin/python" modules="transformers tokenizers numpy tqdm matplotlib pandas" missing
  case ",${EXTRAS:-}," in *,dev,*) modules+=" pytest";; esac
  case ",${EXTRAS:-}," in *,triton,*) modules+=" triton";; esac
  if [ ! -x "$py" ]; then
    if python3 -c "import torch" 2>/dev/null; then
      echo "[env] first run: creating $venv on the system's torch (--system-site-packages)" >&2
      # without ensurepip (some distributions) the venv still works: pip, if needed, is the system's
      python3 -m venv --system-site-packages "$venv" 2>/dev/null || python3 -m venv --system-site-packages --without-pip "$venv"
    else
      echo "[env] first run: creating $venv" >&2
      python3 -m venv "$venv"
    fi || { echo "error: could not create a virtual environment with python3 -m venv" >&2; return 1; }
  fi
  if "$py" -c "import torch" 2>/dev/null; then
    # torch is there (the system's or an earlier install): download only what is missing.
    missing="$(_env_missing "$py" $modules)"
    if [ -n "$missing" ]; then
      echo "[env] installing the missing package(s) $missing into $venv" >&2
      "$py" -m pip install -q $missing >>"$venv/pip.log" 2>&1 || {
        echo "error: missing Python package(s) $missing, and pip could not install them (no package index reachable? see $venv/pip.log): install them into $venv by hand, or set PYTHON" >&2
        return 1; }
    fi
    # Record the project in the venv without resolving or fetching anything; when even that
    # cannot be done offline (no setuptools), PYTHONPATH=src below is enough.
    "$py" -m pip install -q --no-deps --no-index --no-build-isolation -e "$REPO_ROOT" >/dev/null 2>&1 || true
    if [ -n "$(_env_missing "$py" datasets)" ]; then
      echo "[env] note: 'datasets' is not installed, so the data must be local (DATA_DIR); nothing is fetched from the hub" >&2
    fi
  else
    echo "[env] installing torch and the project${EXTRAS:+ with [$EXTRAS]} into $venv (once)" >&2
    "$py" -m pip install -q --upgrade pip >>"$venv/pip.log" 2>&1 || true  # an old pip may not know newer wheels
    _env_install_torch "$py" "$venv/pip.log" || {
      echo "error: missing Python package torch, and pip could not install ${TORCH_SPEC:-torch>=2.4} (no package index reachable? see $venv/pip.log)" >&2
      return 1; }
    "$py" -m pip install -q -e "$REPO_ROOT${EXTRAS:+[$EXTRAS]}" >>"$venv/pip.log" 2>&1 || {
      echo "error: installing the project's dependencies with pip failed (no package index reachable? see $venv/pip.log)" >&2
      return 1; }
  fi
}

if [ -z "${PYTHON:-}" ]; then
  VENV="${VENV:-$REPO_ROOT/.venv}"
  MARK="$VENV/.grassmann-flows-ready-${EXTRAS:-base}"  # one per set of extras
  if [ ! -f "$MARK" ]; then
    _env_setup "$VENV" || exit 1
    touch "$MARK"
  fi
  PYTHON="$VENV/bin/python"
fi
export PYTHONPATH="$REPO_ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
