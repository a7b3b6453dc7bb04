"""Two checks on this project's code, each the guard against a known way to get a number wrong.

1. A wedge of a vector with itself is identically zero: u ∧ u = 0, so a head that
   computes Plücker coordinates of (z, z) gets, after normalisation and projection, the
   projection's bias for every input, and its mixing carries nothing about the input.
   Our SNLI head pairs distinct tokens
   (`tests/test_snli_heads.py::test_window_pairs_never_pair_a_token_with_itself`).
2. The metric reported as "test" is computed on the test split: both the end-of-training
   test metric and the eval entry point count the targets of the test split, not of the
   validation split.

technical.md §5.2 and §5.3 say where these came up in public code and what is and is not
known about their effect there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from grassmann_flows import eval_wikitext, train
from grassmann_flows.data.wikitext import LMDataConfig, load_lm_splits
from grassmann_flows.models.config import MixerConfig
from grassmann_flows.models.mixer.naive import normalize
from grassmann_flows.ops.wedge_project import pluecker

FIXTURE = Path(__file__).parent / "fixtures" / "data"


def test_self_wedge_is_identically_zero_so_the_head_sees_only_its_bias() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 7, 64, dtype=torch.float64, generator=g)  # d_proj = 64: 2,016 coordinates
    p = pluecker(z, z)
    assert p.shape[-1] == 64 * 63 // 2 and torch.equal(p, torch.zeros_like(p))  # exactly, not approximately
    weight = torch.randn(256, p.shape[-1], dtype=torch.float64, generator=g)
    bias = torch.randn(256, dtype=torch.float64, generator=g)
    out = F.linear(normalize(p, MixerConfig()), weight, bias)
    other = F.linear(normalize(pluecker(-5 * z + 1, -5 * z + 1), MixerConfig()), weight, bias)
    assert torch.equal(out, bias.expand_as(out)) and torch.equal(out, other)  # any input: the bias
    # A wedge of two different tokens is not degenerate.
    assert pluecker(z[:, 1:], z[:, :-1]).abs().amax() > 0.1


def test_reported_test_metric_is_computed_on_the_test_split(tmp_path: Path) -> None:
    args = ["--model", "grassmann", "--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2",
            "--n-layers", "2", "--seq-len", "16", "--batch-size", "8", "--max-steps-per-epoch", "2",
            "--epochs", "1", "--data-dir", str(FIXTURE), "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "run")]
    assert train.main(args) == 0
    splits = load_lm_splits(FIXTURE, LMDataConfig(seq_len=16), tmp_path / "cache")
    n_test, n_val = splits["test"].n_targets, splits["validation"].n_targets
    assert n_test != n_val  # the fixture's splits can be told apart by size
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["n_targets"] == n_test and results["best_val_n_targets"] == n_val
    assert eval_wikitext.main([str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]) == 0
    evaluated = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert evaluated["split"] == "test" and evaluated["blocks"]["n_targets"] == n_test
