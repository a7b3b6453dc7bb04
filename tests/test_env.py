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


def test_missing_torch_without_an_index_is_one_line(tmp_path: Path) -> None:
    probe = subprocess.run([str(BASE_PYTHON), "-c", "import torch"], capture_output=True, env={})
    if probe.returncode == 0:
        pytest.skip(f"{BASE_PYTHON} has a system torch, so env.sh never needs pip for it here")
    res = source_env(tmp_path, TORCH_SPEC="torch==2.13.0")
    assert res.returncode == 1
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "missing Python package torch" in err[0] and "torch==2.13.0" in err[0]
    assert "PYTHON=" not in res.stdout
