"""Train a language model on WikiText-2 (raw): Transformer or Grassmann, any preset.

    python -m grassmann_flows.train --model grassmann --preset paper --seq-len 256 --n-layers 12

Writes <out-dir>/{config.json, metrics.jsonl, best.pt, last.pt, results.json}.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.sources import data_dir_given, ensure_dataset, resolve_data_dir
from .data.wikitext import IGNORE_INDEX, LMBlocks, LMDataConfig, describe, load_lm_splits
from .models import PRESETS, LanguageModel, count_parameters
from .runs import QUICK_HELP, add_dataclass_args, cli, corpus_label, default_cache_dir, info
from .spec import spec_from_args
from .training import TrainConfig, autocast, eval_batches, exit_code, fit, gather_batch


class LMTask:
    """Next-token prediction over non-overlapping blocks; validation metric: loss (PPL)."""

    name = "wikitext"
    metric = "loss"
    higher_is_better = False

    def __init__(self, splits: dict[str, LMBlocks], head_loss: str = "auto") -> None:
        self.splits = splits
        self.head_loss = head_loss

    def n_train(self) -> int:
        return len(self.splits["train"])

    def train_batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return gather_batch(self.splits["train"], indices.tolist(), device)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        return lm_loss(model, x, y, chunked_head(self.head_loss, x.device)), x.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, batch_size: int,
                 max_batches: int = 0, precision: str = "auto") -> dict[str, Any]:
        """Token-weighted perplexity over the split's non-overlapping blocks."""
        return evaluate_blocks(model, self.splits[split], device, batch_size, max_batches, precision,
                               self.head_loss)


def chunked_head(head_loss: str, device: torch.device) -> bool:
    """Whether `TrainConfig.head_loss` (checked by `spec_from_args`) computes the head's
    cross-entropy in chunks on `device`."""
    return head_loss == "chunked" or (head_loss == "auto" and device.type == "cpu")


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunked: bool, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of next-token targets y (B, L) (IGNORE_INDEX: none) given inputs x (B, L):
    through the model's chunked head, or from its (B, L, V) logits."""
    if chunked:
        return model(x, targets=y, reduction=reduction)
    return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)


@torch.no_grad()
def evaluate_blocks(model: nn.Module, ds: LMBlocks, device: torch.device, batch_size: int,
                    max_batches: int = 0, precision: str = "auto", head_loss: str = "auto") -> dict[str, Any]:
    """exp(total cross-entropy / total targets): every target token weighs the same.

    precision: the run's (see `training.autocast`), so that evaluation computes what training did.
    """
    was_training = model.training
    model.eval()
    chunked = chunked_head(head_loss, device)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in eval_batches(ds, batch_size, max_batches, device):
        with autocast(device, precision):
            total += lm_loss(model, x, y, chunked, reduction="sum").double()
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    loss = (total / max(1, count)).item()
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "n_targets": count}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=("transformer", "grassmann"))
    p.add_argument("--preset", default="paper", choices=PRESETS)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-positions", type=int, default=None, help="position-table rows (default: seq_len)")
    p.add_argument("--mixer-impl", default=None, choices=("naive", "fast", "fused"))
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any model option, e.g. --opt normalize=false --opt offsets=1,2,4 (repeatable)")
    p.add_argument("--tag", default="", help="suffix of the run name (ablations)")
    p.add_argument("--data-dir", default=None, help="local data directory (default: $DATA_DIR or <repo>/data)")
    p.add_argument("--cache-dir", default=None, help="tokenised-split cache (default: $CACHE_DIR or <repo>/cache)")
    p.add_argument("--out-dir", default=None, help="run directory (default: outputs/manual/<run name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.pt")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    add_dataclass_args(p, LMDataConfig)
    add_dataclass_args(p, TrainConfig)
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    spec = spec_from_args("wikitext", args)
    data_dir = resolve_data_dir(args.data_dir)
    ensure_dataset("wikitext", data_dir, fetch=not data_dir_given(args.data_dir))  # fails here, before any work
    model_cfg = spec.model_config()
    out_dir = Path(args.out_dir) if args.out_dir else Path("outputs/manual") / spec.name

    splits = load_lm_splits(data_dir, spec.data, Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    info(describe(splits))
    torch.manual_seed(spec.train.seed)
    model = LanguageModel(model_cfg)
    corpus = corpus_label("wikitext", data_dir)
    info(f"run {spec.name}: {count_parameters(model):,} parameters, corpus={corpus}, out={out_dir}")
    run_info = {
        "model": model_cfg.to_dict(),
        "data": {**asdict(spec.data), "data_dir": str(data_dir), "corpus": corpus},
        "summary": {"run_name": spec.name, "task": "wikitext", "model": spec.model, "preset": spec.preset,
                    "tag": spec.tag, "seq_len": spec.seq_len, "n_layers": spec.n_layers,
                    "seed": spec.train.seed, "lr": spec.train.lr, "corpus": corpus, "data_dir": str(data_dir),
                    **({"quick": True} if args.quick else {})},
    }
    results = fit(model, LMTask(splits, spec.train.head_loss), spec.train, out_dir, run_info, resume=args.resume)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
