"""Evaluate a WikiText-2 run's best.pt on the test split (or another split).

    python -m grassmann_flows.eval_wikitext outputs/<ts>/grassmann_wikitext_L256_N12_paper_lr6e-4_s0
    python -m grassmann_flows.eval_wikitext RUN_DIR --sliding-window 128

Token-weighted perplexity over non-overlapping blocks, as in training; with
--sliding-window S, windows of L tokens advance by S and only their last S targets
count, so (almost) every token is predicted with L-S or more tokens of context.
Writes <run>/eval_<split>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.sources import data_dir_given, resolve_data_dir
from .data.wikitext import LMDataConfig, load_lm_splits
from .runs import cli, default_cache_dir, load_run
from .train import evaluate_blocks
from .training import autocast, resolve_device


@torch.no_grad()
def evaluate_sliding(model: nn.Module, tokens: np.ndarray, seq_len: int, stride: int,
                     batch_size: int, device: torch.device, precision: str = "auto") -> dict[str, Any]:
    """Perplexity with overlapping windows: tokens (n,) -> loss, ppl, n_targets.

    Window w covers tokens[w*S : w*S + L + 1]; it scores its last S targets (all L
    for the first window), so each target is scored exactly once. precision: the run's.
    """
    if not 0 < stride <= seq_len:
        raise ValueError(f"--sliding-window must be in [1, seq_len={seq_len}], got {stride}")
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    starts = list(range(0, len(ids) - seq_len, stride))
    # Summed on the device and read once at the end: a read per window would wait for the GPU each time.
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    scored_tail = torch.arange(seq_len, device=device) >= seq_len - stride  # a window's last S targets
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        win = torch.stack([ids[s:s + seq_len + 1] for s in chunk]).to(device)
        with autocast(device, precision):
            logits = model(win[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1).float(), win[:, 1:].flatten(), reduction="none").view(len(chunk), -1)
        first = torch.tensor([s == 0 for s in chunk], device=device)
        keep = scored_tail | first[:, None]
        total += nll.double().masked_fill(~keep, 0.0).sum()
        count += sum(seq_len if s == 0 else stride for s in chunk)
    loss = total.item() / max(1, count)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "n_targets": count, "stride": stride}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (uses its best.pt) or a checkpoint path")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--sliding-window", type=int, default=0, metavar="STRIDE",
                   help="also evaluate with overlapping windows advancing by STRIDE tokens")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int, default=0, help="evaluate only this many batches (0 = all)")
    p.add_argument("--data-dir", default=None, help="default: the run's own data directory")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--expect", action="append", default=[], metavar="KEY=VALUE",
                   help="refuse a checkpoint whose run summary differs (e.g. model=grassmann)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .runs import parse_option

    device = resolve_device(args.device)
    model, meta, ckpt = load_run(args.run, dict(parse_option(e) for e in args.expect), device)
    if meta["summary"]["task"] != "wikitext":
        raise ValueError(f"{ckpt} is a {meta['summary']['task']} checkpoint, not a WikiText-2 one")
    data_cfg = LMDataConfig(**{k: v for k, v in meta["data"].items() if k in LMDataConfig.__dataclass_fields__})
    data_dir = resolve_data_dir(args.data_dir or meta["data"]["data_dir"])
    ds = load_lm_splits(data_dir, data_cfg, Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
                        (args.split,), fetch=not data_dir_given(args.data_dir))[args.split]
    precision = meta["train"]["precision"]  # evaluate as the run was trained and validated
    print(f"evaluating {ckpt} (epoch {meta['state']['best_epoch']}) on {args.split} ({ds.n_targets:,} targets"
          + (f"; the first {args.max_batches} batches of {args.batch_size} blocks only" if args.max_batches else "")
          + f"), precision {precision}", flush=True)
    result: dict[str, Any] = {"checkpoint": str(ckpt), "split": args.split, "corpus": meta["data"]["corpus"],
                              "precision": precision,
                              "blocks": evaluate_blocks(model, ds, device, args.batch_size, args.max_batches,
                                                        precision)}
    print(f"EVAL split={args.split} mode=blocks loss={result['blocks']['loss']:.4f} ppl={result['blocks']['ppl']:.2f} "
          f"n_targets={result['blocks']['n_targets']}")
    if args.sliding_window:
        result["sliding"] = evaluate_sliding(model, ds.tokens, data_cfg.seq_len, args.sliding_window,
                                             args.batch_size, device, precision)
        print(f"EVAL split={args.split} mode=sliding stride={args.sliding_window} "
              f"loss={result['sliding']['loss']:.4f} ppl={result['sliding']['ppl']:.2f} "
              f"n_targets={result['sliding']['n_targets']}")
    out = ckpt.parent / f"eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
