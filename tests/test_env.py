"""scripts/env.sh: offline where torch already exists, one clear line where pip cannot help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BASE_PYTHON = Path(getattr(sys, "_base_executable", sys.executable))
# pip with no package index at all: any download attempt fails at once
NO_INDEX = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def source_env(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`source scripts/env.sh` of a copy of the project (pip writes into it), with a fresh VENV
    and `python3` = this interpreter's base Python."""
    repo = tmp_path / "repo"
    if not repo.exists():
        for item in ("src", "scripts", "pyproject.toml"):
            (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, repo / item)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").unlink(missing_ok=True)
    (bin_dir / "python3").symlink_to(BASE_PYTHON)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYTHONPATH", "VIRTUAL_ENV")}
    full = {**base, **NO_INDEX, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["bash", "-c", 'source scripts/env.sh && echo "PYTHON=$PYTHON"'], cwd=repo, env=full,
                          capture_output=True, text=True, timeout=600)


def test_system_torch_is_reused_and_nothing_is_downloaded(tmp_path: Path) -> None:
    # A "system" torch: this interpreter's site-packages made visible to python3 through PYTHONPATH.
    site = str(Path(torch.__file__).parents[1])
    res = source_env(tmp_path, PYTHONPATH=site)
    assert res.returncode == 0, res.stderr
    venv = tmp_path / "venv"
    assert f"PYTHON={venv}/bin/python" in res.stdout
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert not (venv / "pip.log").exists()  # no package was missing, so pip was never asked
    assert "--system-site-packages" in res.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch, grassmann_flows; print(torch.__file__)"],
                           env={**os.environ, "PYTHONPATH": f"{tmp_path / 'repo' / 'src'}:{site}"},
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith(site)
    again = source_env(tmp_path, PYTHONPATH=site)  # ready: the second source does nothing
    assert again.returncode == 0 and again.stderr == ""


def fake_nvidia_smi(tmp_path: Path, works: bool) -> Path:
    """A bin directory whose `nvidia-smi` lists a GPU (works) or fails as without a driver."""
    bin_dir = tmp_path / "gpu-bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n" if works else
                    "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    tool.chmod(0o755)
    return bin_dir


def torch_index(tmp_path: Path, gpu: bool, **env: str) -> str:
    """What _env_torch_index of scripts/env.sh answers (env.sh sourced with PYTHON set: it only defines)."""
    path = f"{fake_nvidia_smi(tmp_path, gpu)}:{os.environ['PATH']}"
    base = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    res = subprocess.run(["bash", "-c", "source scripts/env.sh && _env_torch_index"], cwd=REPO,
                         env={**base, "PYTHON": sys.executable, "PATH": path, **env}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux" or Path("/dev/nvidia0").exists(),
                    reason="the automatic choice is Linux's, and this machine has an NVIDIA device node")
def test_torch_is_the_cpu_build_where_no_nvidia_gpu_is_visible(tmp_path: Path) -> None:
    assert torch_index(tmp_path, gpu=False) == "https://download.pytorch.org/whl/cpu"
    assert torch_index(tmp_path, gpu=True) == ""  # a GPU: the default (CUDA) build from PyPI
    # the user's choice wins, an empty one meaning PyPI's default build
    assert torch_index(tmp_path, gpu=False, TORCH_INDEX_URL="") == ""
    assert torch_index(tmp_path, gpu=True, TORCH_INDEX_URL="https://example.org/whl/cu124") == \
        "https://example.org/whl/cu124"


def test_missing_torch_without_an_index_is_one_line(tmp_path: Path) -> None:
    probe = subprocess.run([str(BASE_PYTHON), "-c", "import torch"], capture_output=True, env={})
    if probe.returncode == 0:
        pytest.skip(f"{BASE_PYTHON} has a system torch, so env.sh never needs pip for it here")
    # no GPU, and (NO_INDEX) neither the CPU index nor the default one can serve torch: both are
    # tried, in that order, and the failure is one line
    res = source_env(tmp_path, TORCH_SPEC="torch==2.13.0", TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert res.returncode == 1
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "missing Python package torch" in err[0] and "torch==2.13.0" in err[0]
    assert "could not serve torch==2.13.0 (see" in res.stderr and "trying the default index" in res.stderr
    tried = [line for line in (tmp_path / "venv" / "pip.log").read_text().splitlines() if line.startswith("$ pip")]
    assert tried == ["$ pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
                     "$ pip install torch==2.13.0"]
    assert "PYTHON=" not in res.stdout
