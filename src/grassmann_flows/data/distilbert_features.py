"""Frozen-backbone feature cache for the SNLI heads: run DistilBERT once per split.

With a frozen backbone its token features never change, so they are computed once
and stored on disk in float16; head training then reads them at head speed.

Layout of one cache directory (``<cache_dir>/<name>-<key>/``)::

    tokens.npy    (T, dim) float16   the features of every real token of every
                                     distinct sentence, sentence after sentence
    offsets.npy   (S + 1,) int64     sentence i is tokens[offsets[i]:offsets[i + 1]]
    examples.npy  (N, F) int64       each example's sentence ids: F = 2 (premise,
                                     hypothesis) for "separate", 1 for "pair"
    labels.npy    (N,) int64
    meta.json     written last: its presence marks a complete cache

Only real tokens are stored and each distinct sentence once (every SNLI premise
comes with about three hypotheses): the train split takes about 13 GB instead of
the 81 GB of padded 2 x 48 x 768 float16 rows. The key hashes the backbone (config
+ a checksum of every weight) and the token arrays themselves, which covers the
tokenizer, its settings and the split file. A cache is built in a temporary
directory and renamed into place, so an interrupted build is never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

FORMAT_VERSION = 1  # bump when the layout above changes, to invalidate old caches
# encoding -> the (ids, mask) fields of data.snli.tokenize_snli that hold its sentences
FIELDS = {
    "separate": (("premise_ids", "premise_mask"), ("hypothesis_ids", "hypothesis_mask")),
    "pair": (("input_ids", "attention_mask"),),
}
# what a batch calls each sentence's features: the heads' argument names (the pair rides as premise)
OUTPUT_NAMES = ("premise", "hypothesis")


def backbone_fingerprint(backbone: torch.nn.Module) -> str:
    """sha256 of the backbone's class, config (minus paths and versions) and every weight."""
    h = hashlib.sha256(type(backbone).__name__.encode())
    config = {k: v for k, v in backbone.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "name_or_path")}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(backbone.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoding_of(arrays: Mapping[str, np.ndarray]) -> str:
    """"separate" or "pair", from the fields of a tokenized split."""
    for encoding, fields in FIELDS.items():
        if all(f in arrays for pair in fields for f in pair):
            return encoding
    raise KeyError(f"not a tokenized SNLI split: keys {sorted(arrays)}")


def _sentence_rows(arrays: Mapping[str, np.ndarray], encoding: str) -> np.ndarray:
    """All sentences as rows (F * N, L) int64: token ids, -1 after the last real token."""
    rows = []
    for ids_name, mask_name in FIELDS[encoding]:
        ids, mask = np.asarray(arrays[ids_name]), np.asarray(arrays[mask_name]).astype(bool)
        if (mask[:, 1:] & ~mask[:, :-1]).any():  # storage keeps lengths only
            raise ValueError(f"{mask_name}: padding must follow the real tokens (right padding)")
        rows.append(np.where(mask, ids, -1).astype(np.int64))
    return np.concatenate(rows)


def cache_key(fingerprint: str, arrays: Mapping[str, np.ndarray]) -> str:
    """Hash of the format, the backbone fingerprint and the split's token arrays."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}:{fingerprint}".encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@torch.no_grad()
def build_feature_cache(
    backbone: torch.nn.Module,
    arrays: Mapping[str, np.ndarray],
    cache_dir: str | os.PathLike,
    name: str = "snli",
    batch_size: int = 512,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Directory of the cached features of one tokenized split; built if missing.

    arrays: the output of ``data.snli.tokenize_snli`` (either encoding). The backbone
    runs in eval mode on `device` (default: where it is), over the distinct sentences
    sorted by length so that each batch is padded only to its own longest sentence.
    """
    encoding = encoding_of(arrays)
    fingerprint = backbone_fingerprint(backbone)
    key = cache_key(fingerprint, arrays)
    out = Path(cache_dir) / f"{name}-{key[:16]}"
    if (out / "meta.json").is_file():
        return out

    rows = _sentence_rows(arrays, encoding)
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    lengths = (unique >= 0).sum(1)
    order = np.argsort(lengths, kind="stable")  # table order = length order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unique, lengths = unique[order], lengths[order]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    examples = rank[inverse.reshape(-1)].reshape(len(FIELDS[encoding]), -1).T

    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        dim = backbone.config.dim
        tokens = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=np.float16,
                                           shape=(int(offsets[-1]), dim))
        pad_id = backbone.config.pad_token_id or 0
        for start in tqdm(range(0, len(unique), batch_size), desc=f"DistilBERT features {name}",
                          unit="batch", disable=not progress):
            stop = min(start + batch_size, len(unique))
            batch = torch.from_numpy(unique[start:stop, : lengths[stop - 1]]).to(device)
            mask = batch >= 0
            feats = backbone(input_ids=batch.clamp_min(0).masked_fill(~mask, pad_id),
                             attention_mask=mask.long()).last_hidden_state
            tokens[offsets[start]:offsets[stop]] = feats[mask].to(torch.float16).cpu().numpy()
        tokens.flush()
        del tokens
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "examples.npy", examples.astype(np.int64))
        np.save(tmp / "labels.npy", np.asarray(arrays["labels"], dtype=np.int64))
        meta = dict(format=FORMAT_VERSION, key=key, backbone=fingerprint, encoding=encoding,
                    max_len=int(rows.shape[1]), dim=dim, n_examples=len(examples),
                    n_sentences=len(unique), n_tokens=int(offsets[-1]))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same cache first: keep theirs
            if not (out / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        backbone.train(was_training)
    return out


class CachedFeatureDataset(Dataset):
    """Head inputs from a feature cache (memory-mapped; nothing is loaded up front).

    ds[i] -> premise (max_len, dim) float16, premise_mask (max_len,) long, the same for
    the hypothesis ("separate" only; for "pair" the pair sequence is the premise),
    labels () long. ds[list_of_indices] -> the batch, each field padded only to its
    longest sentence in the batch (one vectorised read; train_snli fetches batches this way).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.encoding: str = self.meta["encoding"]
        self.dim: int = self.meta["dim"]
        self.max_len: int = self.meta["max_len"]
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")
        self.offsets = np.load(self.path / "offsets.npy")
        self.examples = np.load(self.path / "examples.npy")
        self.labels = torch.from_numpy(np.load(self.path / "labels.npy"))

    def __len__(self) -> int:
        return len(self.labels)

    def _sentences(self, sent: np.ndarray, width: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (n, W, dim) float16 and mask (n, W) of sentence ids `sent` (n,)."""
        start, lengths = self.offsets[sent], self.offsets[sent + 1] - self.offsets[sent]
        width = int(lengths.max()) if width is None else width
        mask = np.arange(width) < lengths[:, None]
        feats = np.zeros((len(sent), width, self.dim), dtype=np.float16)
        feats[mask] = self.tokens[(start[:, None] + np.arange(width))[mask]]
        return torch.from_numpy(feats), torch.from_numpy(mask).long()

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        single = np.ndim(index) == 0
        idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
        width = self.max_len if single else None  # single items keep one shape for default_collate
        out = {}
        for col, field in enumerate(OUTPUT_NAMES[: self.examples.shape[1]]):
            out[field], out[f"{field}_mask"] = self._sentences(self.examples[idx, col], width)
        out["labels"] = self.labels[idx]
        return {k: v[0] for k, v in out.items()} if single else out


def cached_feature_splits(
    backbone: torch.nn.Module,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike,
    **options,
) -> dict[str, CachedFeatureDataset]:
    """split -> CachedFeatureDataset, building each split's cache if missing.

    splits: split name -> tokenized arrays (``tokenize_snli`` output, or an
    ``SNLIDataset``'s ``.arrays``). options go to `build_feature_cache`.
    """
    return {split: CachedFeatureDataset(build_feature_cache(backbone, arrays, cache_dir,
                                                            name=f"snli-{split}", **options))
            for split, arrays in splits.items()}
