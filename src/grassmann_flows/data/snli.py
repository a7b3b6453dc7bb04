"""SNLI 1.0: read the gzipped JSONL splits strictly, tokenize once, cache the arrays."""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .sources import SPLITS, atomic_write, ensure_dataset, sha256_file
from .tokenizers import load_tokenizer, tokenizer_fingerprint

LABELS = ("entailment", "neutral", "contradiction")  # label id = index (HF snli convention)
FORMAT_VERSION = 1  # bump when the encoding below changes, to invalidate old caches
BATCH = 4096  # pairs per tokenizer call: bounds the memory of the Python lists it returns


class DataFormatError(ValueError):
    """An SNLI file does not hold the expected {"premise", "hypothesis", "label"} lines."""


@dataclass
class SNLIDataConfig:
    tokenizer: str = "bert-base-uncased"
    max_len: int = 128  # "pair": length of [CLS] premise [SEP] hypothesis [SEP] + padding
    # "pair": one sequence per example (truncation longest_first);
    # "separate": premise and hypothesis each as [CLS] sentence [SEP], padded to sent_len
    encoding: Literal["pair", "separate"] = "pair"
    sent_len: int = 48

    def __post_init__(self):
        if self.encoding not in ("pair", "separate"):
            raise ValueError(f"encoding must be 'pair' or 'separate', got {self.encoding!r}")


def _parse_line(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{where}: bad JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("premise", "hypothesis", "label") if k not in obj]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    if not (isinstance(obj["premise"], str) and isinstance(obj["hypothesis"], str)):
        raise DataFormatError(f"{where}: premise and hypothesis must be strings")
    label = obj["label"]
    if type(label) is not int or label not in (-1, 0, 1, 2):
        raise DataFormatError(f"{where}: unknown label {label!r} (expected 0, 1, 2, or -1 for no gold label)")
    return {"premise": obj["premise"], "hypothesis": obj["hypothesis"], "label": label}


def read_snli(path: str | Path) -> list[dict]:
    """Rows {"premise": str, "hypothesis": str, "label": 0|1|2} of one .jsonl.gz split.

    Rows with label -1 (no gold label) are dropped. Raises DataFormatError naming the file
    and line on a bad line, an unreadable file, or a split with no labelled rows.
    """
    path = Path(path)
    rows, lineno = [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    row = _parse_line(line, f"{path}:{lineno}")
                    if row["label"] != -1:
                        rows.append(row)
        except (OSError, EOFError, UnicodeDecodeError) as e:  # not gzip, truncated, not UTF-8
            raise DataFormatError(f"{path}:{lineno + 1}: unreadable ({type(e).__name__}: {e})") from e
    if not rows:
        raise DataFormatError(f"{path}:{lineno}: empty split (no labelled pairs in {lineno} lines)")
    return rows


def _encode(tok, first: list[str], second: list[str] | None, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded/truncated ids (N, length) int32 and attention mask (N, length) uint8."""
    ids = np.empty((len(first), length), dtype=np.int32)
    mask = np.empty((len(first), length), dtype=np.uint8)
    for s in range(0, len(first), BATCH):
        enc = tok(first[s:s + BATCH], None if second is None else second[s:s + BATCH],
                  truncation="longest_first", max_length=length, padding="max_length",
                  return_token_type_ids=False, return_tensors="np")
        ids[s:s + BATCH], mask[s:s + BATCH] = enc["input_ids"], enc["attention_mask"]
    return ids, mask


def tokenize_snli(path: str | Path, cfg: SNLIDataConfig, cache_dir: str | Path) -> dict[str, np.ndarray]:
    """Encode one split; cached in ``cache_dir`` as .npz keyed by file contents and cfg.

    Returns, for N pairs, labels (N,) int64 and
      "pair":     input_ids (N, max_len) int32, attention_mask (N, max_len) uint8
      "separate": premise_ids, premise_mask, hypothesis_ids, hypothesis_mask, each (N, sent_len)
    Masks are 1 on real tokens, 0 on padding.
    """
    path = Path(path)
    length = cfg.max_len if cfg.encoding == "pair" else cfg.sent_len
    settings = dict(format=FORMAT_VERSION, file=sha256_file(path), tokenizer=cfg.tokenizer,
                    vocab=tokenizer_fingerprint(cfg.tokenizer), encoding=cfg.encoding, length=length)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    split = path.name.split(".")[0]
    cache = Path(cache_dir) / f"snli-{split}-{cfg.tokenizer}-{cfg.encoding}{length}-{key}.npz"
    if not cache.is_file():
        tok = load_tokenizer(cfg.tokenizer)
        if tok.pad_token is None or tok.sep_token is None:
            raise ValueError(f"SNLI encoding needs [SEP] and [PAD] tokens, which {cfg.tokenizer!r} lacks")
        rows = read_snli(path)
        premises, hypotheses = [r["premise"] for r in rows], [r["hypothesis"] for r in rows]
        arrays = {"labels": np.array([r["label"] for r in rows], dtype=np.int64)}
        if cfg.encoding == "pair":
            arrays["input_ids"], arrays["attention_mask"] = _encode(tok, premises, hypotheses, length)
        else:
            arrays["premise_ids"], arrays["premise_mask"] = _encode(tok, premises, None, length)
            arrays["hypothesis_ids"], arrays["hypothesis_mask"] = _encode(tok, hypotheses, None, length)
        atomic_write(cache, lambda f: np.savez(f, **arrays))
    with np.load(cache) as z:
        return {k: z[k] for k in z.files}


class SNLIDataset(Dataset):
    """Item i: dict of int64 tensors, the arrays of tokenize_snli at row i (labels: 0-dim)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["labels"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v[i], dtype=torch.long) for k, v in self.arrays.items()}


def load_snli_splits(data_dir: str | Path, cfg: SNLIDataConfig, cache_dir: str | Path,
                     splits: tuple[str, ...] = SPLITS, fetch: bool = True) -> dict[str, SNLIDataset]:
    """split -> SNLIDataset for `splits` (default train/validation/test), fetching missing data
    first unless not `fetch` (see `ensure_dataset`)."""
    files = ensure_dataset("snli", Path(data_dir), splits, fetch)
    return {split: SNLIDataset(tokenize_snli(path, cfg, cache_dir)) for split, path in files.items()}
