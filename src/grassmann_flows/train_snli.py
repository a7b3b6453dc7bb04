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
from .data.sources import data_dir_given, ensure_dataset, resolve_data_dir
from .models import PRESETS, PairClassifier, count_parameters
from .runs import QUICK_HELP, add_dataclass_args, cli, corpus_label, default_cache_dir, info
from .data.distilbert_features import CachedFeatureDataset, cached_feature_splits
from .models.snli_heads import build_snli_model, nli_inputs
from .spec import spec_from_args
from .utils import distributed
from .training import TrainConfig, autocast, eval_batches, exit_code, fit, gather_batch, resolve_device, to_device

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
    options.update(head.get("options", {}))  # --head-opt (absent from runs written before it)
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
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.add_argument("--backbone", default="distilbert-base-uncased",
                   help="distilbert mode: hub name or local directory of the backbone")
    p.add_argument("--finetune-backbone", action="store_true", help="distilbert mode: train the backbone too")
    p.add_argument("--encoding", default="separate", choices=("separate", "pair"),
                   help="distilbert mode: premise and hypothesis as two 48-token inputs (paper) or one pair")
    p.add_argument("--head-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="distilbert mode: an argument of the head's constructor, e.g. --head-opt d_model=32 "
                        "(repeatable; default: the paper's head)")
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
    spec = spec_from_args("snli", args)
    data_cfg, train_cfg = spec.data, spec.train
    data_dir = resolve_data_dir(args.data_dir)
    ensure_dataset("snli", data_dir, fetch=not data_dir_given(args.data_dir))
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    corpus = corpus_label("snli", data_dir)
    summary = {"task": "snli", "snli_mode": spec.snli_mode, "model": spec.model, "preset": spec.preset,
               "tag": spec.tag, "n_layers": spec.n_layers, "seed": train_cfg.seed, "lr": train_cfg.lr,
               "corpus": corpus, "data_dir": str(data_dir), "seq_len": spec.seq_len,
               **({"quick": True} if args.quick else {})}
    torch.manual_seed(train_cfg.seed)
    if spec.snli_mode == "scratch":
        model_cfg = spec.model_config()
        splits = load_snli_splits(data_dir, data_cfg, cache_dir)
        model = PairClassifier(model_cfg, pooling=spec.pooling)
        task = SNLITask(splits)
        model_info = {"model": model_cfg.to_dict(), "classifier": {"pooling": spec.pooling}}
    else:
        splits = load_snli_splits(data_dir, data_cfg, cache_dir)
        # Under torchrun each rank computes on its own GPU (not all on cuda:0): join first.
        # Rank 0 builds the feature cache; the others then find it instead of building it too.
        device = distributed.init(resolve_device(train_cfg.device))
        if distributed.is_rank0():
            model, task = distilbert_setup(spec.head, splits, cache_dir, device)
        distributed.barrier()
        if not distributed.is_rank0():
            model, task = distilbert_setup(spec.head, splits, cache_dir, device)
        model_info = {"distilbert": spec.head}
        # The head's own depth; no LM preset shapes it.
        summary.update(transformer_head=spec.head["combine"], n_layers=getattr(model, "head", model).n_layers)
    for split, ds in splits.items():
        info(f"snli {split}: {len(ds):,} pairs ({data_cfg.encoding} encoding)")
    out_dir = Path(args.out_dir) if args.out_dir else Path("outputs/manual") / spec.name
    info(f"run {spec.name}: {count_parameters(model):,} trainable-module parameters, corpus={corpus}, out={out_dir}")
    run_info = {**model_info, "data": {**asdict(data_cfg), "data_dir": str(data_dir), "corpus": corpus},
                "summary": {"run_name": spec.name, **summary}}
    results = fit(model, task, train_cfg, out_dir, run_info, resume=args.resume)
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
