"""The checkout's paths, importable without torch (the analysis scripts read them)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/grassmann_flows/utils/paths.py -> repo


def display_path(path: Path) -> str:
    """`path` relative to the repository when inside it, so summaries do not name a machine."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
