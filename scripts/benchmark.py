#!/usr/bin/env python
"""Benchmark of the Grassmann mixer, the models' training step and decoding: see
`grassmann_flows.bench.cli` (usage: python scripts/benchmark.py --help)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from grassmann_flows.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
