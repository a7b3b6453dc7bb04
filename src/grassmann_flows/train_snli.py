"""Train an SNLI classifier, from scratch or as a head on DistilBERT (the paper's Table 3).

    python -m grassmann_flows.train_snli --model grassmann --n-layers 6          # scratch
    python -m grassmann_flows.train_snli --mode distilbert --model grassmann     # paper's heads

scratch: an encoder of --model over `[CLS] premise [SEP] hypothesis [SEP]`.
distilbert: a --model head (Transformer or Grassmann-Plücker) over DistilBERT token
features; with the backbone frozen (default) the features are computed once and cached.

Writes <out-dir>/{config.json, metrics.jsonl, best.pt, last.pt, results.json}.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.snli import LABELS, SNLIDataConfig, SNLIDataset, load_snli_splits
from .data.sources import ensure_dataset, resolve_data_dir
from .models import PRESETS, build_classifier, count_parameters
from .runs import (add_dataclass_args, cli, corpus_label, dataclass_from_args, default_cache_dir, info,
                   parse_option, run_name)
from .data.distilbert_features import CachedFeatureDataset, cached_feature_splits
from .models.snli_heads import build_snli_model, nli_inputs
from .utils import distributed
from .training import TrainConfig, autocast, eval_batches, exit_code, fit, gather_batch, resolve_device, to_device

# SNLI defaults (the paper: 20 epochs; nothing else stated for the classifiers).
SNLI_DEFAULTS = {"epochs": 20, "batch_size": 32, "lr": 3e-4}


def _scratch_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["input_ids"], batch["attention_mask"])


def _head_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(*nli_inputs(batch))


def _fetch(ds: Any, idx: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    # Cached DistilBERT features read a whole batch at once (padded to its longest sentence).
    if isinstance(ds, CachedFeatureDataset):
        return {k: to_device(v, device) for k, v in ds[idx].items()}
    return gather_batch(ds, idx, device)


class SNLITask:
    """3-way classification; validation metric: accuracy.

    splits: token datasets (scratch, fine-tuned DistilBERT) or cached features (frozen).
    forward: how the model consumes a batch.
    """

    name = "snli"
    metric = "acc"
    higher_is_better = True

    def __init__(self, splits: dict[str, Any], forward: Callable[[nn.Module, Any], torch.Tensor] = _scratch_forward):
        self.splits = splits
        self.forward = forward

    def n_train(self) -> int:
        return len(self.splits["train"])

    def train_batch(self, indices: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return _fetch(self.splits["train"], indices.tolist(), device)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        # A device tensor, not an int: reading it here would stall the GPU queue every step.
        n_tokens = sum(v.sum() for k, v in batch.items() if k.endswith("mask"))
        return F.cross_entropy(self.forward(model, batch).float(), batch["labels"]), n_tokens

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, batch_size: int,
                 max_batches: int = 0, precision: str = "auto") -> dict[str, Any]:
        """Accuracy, mean loss, per-class accuracy and the confusion matrix (rows = gold),
        under the run's `precision` (see `training.autocast`)."""
        ds = self.splits[split]
        was_training = model.training
        model.eval()
        # Summed on the device and read once at the end, not once per batch.
        confusion = torch.zeros(len(LABELS) ** 2, dtype=torch.long, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in eval_batches(ds, batch_size, max_batches, device, fetch=_fetch):
            with autocast(device, precision):
                logits = self.forward(model, batch).float()
            total += F.cross_entropy(logits, batch["labels"], reduction="sum").double()
            confusion += torch.bincount(batch["labels"] * len(LABELS) + logits.argmax(-1), minlength=len(LABELS) ** 2)
        model.train(was_training)
        confusion = confusion.view(len(LABELS), len(LABELS)).cpu()
        total_loss = total.item()
        n = int(confusion.sum())
        per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
        return {"acc": confusion.diag().sum().item() / max(1, n), "loss": total_loss / max(1, n), "n": n,
                "per_class_acc": dict(zip(LABELS, per_class)), "confusion": confusion.tolist()}


def distilbert_setup(head: dict[str, Any], splits: dict[str, SNLIDataset], cache_dir: Path,
                      device: torch.device) -> tuple[nn.Module, SNLITask]:
    """The module to train and its task for a DistilBERT head run.

    Frozen backbone: only the head trains, on token features cached once per split
    (so checkpoints hold the head alone). Fine-tuned: the whole model on token ids.
    """
    options = {"combine": head["combine"]} if head.get("combine") else {}  # Transformer head only
    model = build_snli_model(head["head"], head["backbone"], finetune_backbone=head["finetune_backbone"],
                             encoding=head["encoding"], **options)
    if head["finetune_backbone"]:
        return model, SNLITask(splits, _head_forward)
    feats = cached_feature_splits(model.backbone.to(device), {k: ds.arrays for k, ds in splits.items()}, cache_dir)
    return model.head, SNLITask(feats, _head_forward)


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
    p.add_argument("--backbone", default="distilbert-base-uncased",
                   help="distilbert mode: hub name or local directory of the backbone")
    p.add_argument("--finetune-backbone", action="store_true", help="distilbert mode: train the backbone too")
    p.add_argument("--encoding", default="separate", choices=("separate", "pair"),
                   help="distilbert mode: premise and hypothesis as two 48-token inputs (paper) or one pair")
    p.add_argument("--transformer-head", default=None, choices=("joint", "siamese"),
                   help="distilbert mode, --model transformer: attend across both sentences and end in a "
                        "linear layer (joint, default), or encode each alone and end in the Grassmann head's "
                        "MLP on [u; v; |u-v|; u*v] (siamese)")
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
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    corpus = corpus_label("snli", data_dir)
    summary = {"task": "snli", "snli_mode": args.mode, "model": args.model, "preset": args.preset,
               "tag": args.tag, "n_layers": args.n_layers, "seed": train_cfg.seed, "lr": train_cfg.lr, "corpus": corpus,
               "data_dir": str(data_dir)}
    torch.manual_seed(train_cfg.seed)
    if args.mode == "scratch":
        if args.transformer_head:
            raise ValueError("--transformer-head configures the DistilBERT Transformer head (--mode distilbert)")
        from .data.tokenizers import load_tokenizer

        options["vocab_size"] = len(load_tokenizer(data_cfg.tokenizer))
        name = run_name(args.model, "snli", data_cfg.max_len, args.n_layers, train_cfg.seed, args.tag,
                        preset=args.preset, lr=train_cfg.lr)
        splits = load_snli_splits(data_dir, data_cfg, cache_dir)
        model = build_classifier(args.model, args.preset, pooling=args.pooling, **options)
        task = SNLITask(splits)
        model_info = {"model": model.cfg.to_dict(), "classifier": {"pooling": args.pooling}}
        summary["seq_len"] = data_cfg.max_len
    else:
        if args.opt or args.mixer_impl:
            raise ValueError("--opt and --mixer-impl configure the from-scratch encoders (--mode scratch); "
                             "the DistilBERT heads are set up in models/snli_heads.py")
        combine = None
        if args.model == "transformer":
            combine = args.transformer_head or "joint"
        elif args.transformer_head:
            raise ValueError("--transformer-head picks the Transformer head's layout; the Grassmann head "
                             "is always siamese")
        name = run_name(args.model, "snli", None, None, train_cfg.seed, args.tag, preset=None, lr=train_cfg.lr,
                        head=combine)
        head = {"head": args.model, "backbone": args.backbone, "finetune_backbone": args.finetune_backbone,
                "encoding": args.encoding, "combine": combine}
        data_cfg = SNLIDataConfig(tokenizer=data_cfg.tokenizer, encoding=args.encoding, sent_len=48,
                                  max_len=2 * 48)
        splits = load_snli_splits(data_dir, data_cfg, cache_dir)
        # Under torchrun each rank computes on its own GPU (not all on cuda:0): join first.
        # Rank 0 builds the feature cache; the others then find it instead of building it too.
        device = distributed.init(resolve_device(train_cfg.device))
        if distributed.is_rank0():
            model, task = distilbert_setup(head, splits, cache_dir, device)
        distributed.barrier()
        if not distributed.is_rank0():
            model, task = distilbert_setup(head, splits, cache_dir, device)
        model_info = {"distilbert": head}
        # The head's own depth; no LM preset shapes it.
        summary.update(seq_len=data_cfg.sent_len, preset=None, transformer_head=combine,
                       n_layers=getattr(model, "head", model).n_layers)
    for split, ds in splits.items():
        info(f"snli {split}: {len(ds):,} pairs ({data_cfg.encoding} encoding)")
    out_dir = Path(args.out_dir) if args.out_dir else Path("outputs/manual") / name
    info(f"run {name}: {count_parameters(model):,} trainable-module parameters, corpus={corpus}, out={out_dir}")
    run_info = {**model_info, "data": {**asdict(data_cfg), "data_dir": str(data_dir), "corpus": corpus},
                "summary": {"run_name": name, **summary}}
    results = fit(model, task, train_cfg, out_dir, run_info, resume=args.resume)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
