#!/usr/bin/env python
"""Benchmark of the Grassmann mixer, the models' training step and decoding: see
`grassmann_flows.bench.cli` (usage: python scripts/benchmark.py --help)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
# The benchmark alone tunes the Triton kernels (training uses their one pinned config);
# read when the kernels are imported.
os.environ.setdefault("GRASSMANN_FLOWS_KERNEL_CONFIG", "autotune")

from grassmann_flows.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
