"""Evaluate an SNLI run's best.pt on the test split: accuracy, loss, per-class, confusion.

    python -m grassmann_flows.eval_snli outputs/<ts>/grassmann_snli_L128_N6_paper_lr3e-4_s0

Writes <run>/eval_<split>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data.snli import LABELS, SNLIDataConfig, load_snli_splits
from .data.sources import data_dir_given, resolve_data_dir
from .runs import cli, default_cache_dir, load_run, load_weights, open_run, parse_option
from .train_snli import SNLITask, distilbert_setup
from .training import resolve_device


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (uses its best.pt) or a checkpoint path")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="default: the run's own data directory")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = resolve_device(args.device)
    ckpt, path = open_run(args.run, dict(parse_option(e) for e in args.expect), device)
    meta = ckpt["meta"]
    if meta["summary"]["task"] != "snli":
        raise ValueError(f"{path} is a {meta['summary']['task']} checkpoint, not an SNLI one")
    data_cfg = SNLIDataConfig(**{k: v for k, v in meta["data"].items() if k in SNLIDataConfig.__dataclass_fields__})
    data_dir = resolve_data_dir(args.data_dir or meta["data"]["data_dir"])
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    splits = load_snli_splits(data_dir, data_cfg, cache_dir, (args.split,), fetch=not data_dir_given(args.data_dir))
    if meta["summary"].get("snli_mode") == "distilbert":
        model, task = distilbert_setup(meta["distilbert"], splits, cache_dir, device)
        load_weights(model, ckpt, path)
    else:
        model, meta, path = load_run(path, {}, device)
        task = SNLITask(splits)
    precision = meta["train"]["precision"]  # evaluate as the run was trained and validated
    print(f"evaluating {path} (epoch {meta['state']['best_epoch']}) on {args.split} ({len(splits[args.split]):,} pairs"
          + (f"; the first {args.max_batches} batches of {args.batch_size} only" if args.max_batches else "")
          + f"), precision {precision}")
    m = task.evaluate(model.to(device), args.split, device, args.batch_size, args.max_batches, precision)
    print(f"EVAL split={args.split} acc={m['acc']:.4f} loss={m['loss']:.4f} n={m['n']}")
    print("per-class accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in m["per_class_acc"].items()))
    print("confusion (rows gold, columns predicted; " + "/".join(LABELS) + "): " + str(m["confusion"]))
    out = path.parent / f"eval_{args.split}.json"
    out.write_text(json.dumps({"checkpoint": str(path), "split": args.split, "corpus": meta["data"]["corpus"],
                               "precision": precision, **m}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
