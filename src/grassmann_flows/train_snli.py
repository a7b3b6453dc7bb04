"""Train an SNLI classifier: a from-scratch encoder of either kind over the pair encoding.

    python -m grassmann_flows.train_snli --model grassmann --n-layers 6

Writes <out-dir>/{config.json, metrics.jsonl, best.pt, last.pt, results.json}.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.snli import LABELS, SNLIDataConfig, SNLIDataset, load_snli_splits
from .data.sources import ensure_dataset, resolve_data_dir
from .models import PRESETS, build_classifier, count_parameters
from .runs import add_dataclass_args, cli, corpus_label, dataclass_from_args, default_cache_dir, parse_option, run_name
from .training import TrainConfig, autocast, eval_batches, exit_code, fit, gather_batch

# SNLI defaults (the paper: 20 epochs; nothing else stated for the classifiers).
SNLI_DEFAULTS = {"epochs": 20, "batch_size": 32, "lr": 3e-4}


class SNLITask:
    """3-way classification; validation metric: accuracy."""

    name = "snli"
    metric = "acc"
    higher_is_better = True

    def __init__(self, splits: dict[str, SNLIDataset]) -> None:
        self.splits = splits

    def n_train(self) -> int:
        return len(self.splits["train"])

    def train_batch(self, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return gather_batch(self.splits["train"], indices.tolist(), device)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(logits.float(), batch["labels"]), int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, batch_size: int,
                 max_batches: int = 0) -> dict[str, Any]:
        """Accuracy, mean loss, per-class accuracy and the confusion matrix (rows = gold)."""
        ds = self.splits[split]
        was_training = model.training
        model.eval()
        confusion = torch.zeros(len(LABELS), len(LABELS), dtype=torch.long)
        total_loss = 0.0
        for batch in eval_batches(ds, batch_size, max_batches, device):
            with autocast(device, "auto"):
                logits = model(batch["input_ids"], batch["attention_mask"]).float()
            total_loss += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            pairs = batch["labels"].cpu() * len(LABELS) + logits.argmax(-1).cpu()
            confusion += torch.bincount(pairs, minlength=len(LABELS) ** 2).view(len(LABELS), len(LABELS))
        model.train(was_training)
        n = int(confusion.sum())
        per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
        return {"acc": confusion.diag().sum().item() / max(1, n), "loss": total_loss / max(1, n), "n": n,
                "per_class_acc": dict(zip(LABELS, per_class)), "confusion": confusion.tolist()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="scratch", choices=("scratch", "distilbert"),
                   help="scratch: an encoder of --model over the pair encoding; distilbert: a --model head "
                        "on a DistilBERT backbone (the paper's Table 3)")
    p.add_argument("--model", required=True, choices=("transformer", "grassmann"))
    p.add_argument("--preset", default="paper", choices=PRESETS)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--pooling", default="mean", choices=("mean", "cls"))
    p.add_argument("--mixer-impl", default=None, choices=("naive", "fast", "fused"))
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="any model option (repeatable)")
    p.add_argument("--tag", default="")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--resume", action="store_true")
    add_dataclass_args(p, SNLIDataConfig, skip=("encoding", "sent_len"))
    add_dataclass_args(p, TrainConfig)
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    data_cfg = dataclass_from_args(SNLIDataConfig, args, encoding="pair")
    train_cfg = dataclass_from_args(TrainConfig, args, **{k: v for k, v in SNLI_DEFAULTS.items()
                                                           if getattr(args, k) is None})
    options: dict[str, Any] = dict(parse_option(o) for o in args.opt)
    options.update(n_layers=args.n_layers, n_positions=data_cfg.max_len)
    if args.mixer_impl:
        options["mixer_impl"] = args.mixer_impl
    data_dir = resolve_data_dir(args.data_dir)
    ensure_dataset("snli", data_dir)
    from .data.tokenizers import load_tokenizer

    options["vocab_size"] = len(load_tokenizer(data_cfg.tokenizer))
    name = run_name(args.model, "snli", data_cfg.max_len, args.n_layers, train_cfg.seed, args.tag)
    out_dir = Path(args.out_dir) if args.out_dir else Path("outputs/manual") / name
    splits = load_snli_splits(data_dir, data_cfg, Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    for split, ds in splits.items():
        print(f"snli {split}: {len(ds):,} pairs, padded to {data_cfg.max_len} tokens", flush=True)
    torch.manual_seed(train_cfg.seed)
    model = build_classifier(args.model, args.preset, pooling=args.pooling, **options)
    corpus = corpus_label("snli", data_dir)
    print(f"run {name}: {count_parameters(model):,} parameters, corpus={corpus}, out={out_dir}", flush=True)
    run_info = {
        "model": model.cfg.to_dict(),
        "classifier": {"pooling": args.pooling},
        "data": {**asdict(data_cfg), "data_dir": str(data_dir), "corpus": corpus},
        "summary": {"run_name": name, "task": "snli", "snli_mode": "scratch", "model": args.model,
                    "preset": args.preset, "tag": args.tag, "seq_len": data_cfg.max_len,
                    "n_layers": args.n_layers, "seed": train_cfg.seed, "corpus": corpus, "data_dir": str(data_dir)},
    }
    results = fit(model, SNLITask(splits), train_cfg, out_dir, run_info, resume=args.resume)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
