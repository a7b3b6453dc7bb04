"""WikiText-2 (raw) for language modelling: tokenize each split once, cache the ids, cut blocks.

Text convention (as HF ``datasets`` + the HF perplexity guide): the raw file is turned into
HF rows ("" for blank lines, " text\\n" otherwise) and the split is ``cfg.join.join(rows)``,
tokenized as one stream with no special tokens. The split is then cut into non-overlapping
blocks; the remainder that does not fill a block is dropped.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .sources import SPLITS, atomic_write, ensure_dataset, sha256_file, wikitext_text_to_rows
from .tokenizers import load_tokenizer, tokenizer_fingerprint

IGNORE_INDEX = -100  # target value skipped by F.cross_entropy(ignore_index=-100)
FORMAT_VERSION = 1  # bump when the tokenization below changes, to invalidate old caches
# ids on disk: BERT's 30,522 fit in uint16 (half the memory); GPT-2 ids are stored as int32
TOKEN_DTYPE = {"bert-base-uncased": np.uint16, "gpt2": np.int32}
PIECE_CHARS = 1 << 16  # target length of the pieces the text is tokenized in


@dataclass
class LMDataConfig:
    tokenizer: str = "bert-base-uncased"
    seq_len: int = 128  # L: tokens the model sees per sequence
    # "l_plus_1": blocks of L+1 tokens, x = block[:-1], y = block[1:] -> L targets per block.
    # "l_shift": blocks of L tokens, y = x shifted left, last target ignored -> L-1 targets.
    chunking: Literal["l_plus_1", "l_shift"] = "l_plus_1"
    keep_empty_lines: bool = True  # keep the "" rows (they add joins, i.e. paragraph breaks)
    join: str = "\n\n"  # separator between HF rows, as in the HF perplexity guide
    add_special_tokens: bool = False  # wrap the whole split as one sequence (BERT: [CLS] .. [SEP])

    def __post_init__(self):
        if self.chunking not in ("l_plus_1", "l_shift"):
            raise ValueError(f"chunking must be 'l_plus_1' or 'l_shift', got {self.chunking!r}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")


def read_wikitext_rows(path: str | Path) -> list[str]:
    """Rows of a raw WikiText file exactly as HF ``datasets`` gives them ("" or " text\\n")."""
    # universal newlines, so CRLF copies of the raw files read the same as the LF originals
    return wikitext_text_to_rows(Path(path).read_text(encoding="utf-8"))


def split_text(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``piece_chars`` whose tokenizations, concatenated,
    equal the tokenization of ``text`` as one string.

    Each cut is placed just before a space that is followed by a non-space. That is a token
    boundary for both tokenizers: BERT's pre-tokenizer splits on every whitespace and its
    normalizer is per character; GPT-2's regex pre-tokenizer (no lookbehind, add_prefix_space
    off) always starts a new pre-token at such a space (" word", " ,", ...), and a piece
    ending in a whitespace run matches that run the same way as in the full text. Cutting
    lets the fast tokenizer work on pieces in parallel, without max-length warnings.
    """
    pieces, start, cut = [], 0, re.compile(r" (?=\S)")
    while len(text) - start > piece_chars:
        m = cut.search(text, start + piece_chars)
        if m is None:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def encode_text(text: str, tokenizer: str, add_special_tokens: bool) -> np.ndarray:
    """Token ids of ``text`` tokenized as one string. Returns (n_tokens,) int64."""
    backend = load_tokenizer(tokenizer).backend_tokenizer
    # The tokenizer object is shared (cached): an SNLI encoding in the same process leaves
    # truncation and padding switched on in its backend, which would silently cut pieces.
    backend.no_truncation()
    backend.no_padding()
    encs = backend.encode_batch(split_text(text), add_special_tokens=False)
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
    if add_special_tokens:
        # what the tokenizer puts around one sequence: encode a one-token text ("a") and
        # keep what precedes / follows it ([CLS] / [SEP] for BERT, nothing for GPT-2)
        e = backend.encode("a", add_special_tokens=True)
        body = e.special_tokens_mask.index(0)
        ids = [np.asarray(e.ids[:body], dtype=np.int64), *ids, np.asarray(e.ids[body + 1:], dtype=np.int64)]
    return np.concatenate(ids)


def tokenize_split(path: str | Path, cfg: LMDataConfig, cache_dir: str | Path) -> np.ndarray:
    """Token ids of one raw WikiText split, shape (n_tokens,), uint16 (bert) or int32 (gpt2).

    Cached in ``cache_dir`` as a .npy keyed by the file contents, tokenizer files and text
    options (not seq_len / chunking: blocks are cut at load time). A cache hit returns a
    read-only memmap without loading the tokenizer.
    """
    path = Path(path)
    settings = dict(format=FORMAT_VERSION, file=sha256_file(path), tokenizer=cfg.tokenizer,
                    vocab=tokenizer_fingerprint(cfg.tokenizer), keep_empty_lines=cfg.keep_empty_lines,
                    join=cfg.join, add_special_tokens=cfg.add_special_tokens)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"wikitext-{path.stem}-{cfg.tokenizer}-{key}.npy"
    if not cache.is_file():
        rows = read_wikitext_rows(path)
        if not cfg.keep_empty_lines:
            rows = [r for r in rows if r]
        ids = encode_text(cfg.join.join(rows), cfg.tokenizer, cfg.add_special_tokens)
        atomic_write(cache, lambda f: np.save(f, ids.astype(TOKEN_DTYPE[cfg.tokenizer])))
    return np.load(cache, mmap_mode="r")


class LMBlocks(Dataset):
    """Non-overlapping blocks of a token stream; item i is (x, y), two (L,) int64 tensors.

    l_plus_1: block = tokens[i*(L+1) : (i+1)*(L+1)], x = block[:-1], y = block[1:].
    l_shift:  block = tokens[i*L : (i+1)*L], x = block, y = block[1:] + [IGNORE_INDEX].
    """

    def __init__(self, tokens: np.ndarray, cfg: LMDataConfig):
        self.tokens, self.seq_len, self.chunking = tokens, cfg.seq_len, cfg.chunking
        self.block_len = cfg.seq_len + 1 if cfg.chunking == "l_plus_1" else cfg.seq_len

    @property
    def n_tokens(self) -> int:
        """Tokens in the split, including the dropped remainder."""
        return len(self.tokens)

    @property
    def n_blocks(self) -> int:
        return self.n_tokens // self.block_len

    @property
    def n_targets(self) -> int:
        """Predicted tokens over all blocks (L per block for l_plus_1, L-1 for l_shift)."""
        return self.n_blocks * (self.block_len - 1)

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"block {i} out of range [0, {self.n_blocks})")
        block = torch.from_numpy(self.tokens[i * self.block_len:(i + 1) * self.block_len].astype(np.int64))
        if self.chunking == "l_plus_1":
            return block[:-1], block[1:]
        y = torch.full_like(block, IGNORE_INDEX)
        y[:-1] = block[1:]
        return block, y


def load_lm_splits(data_dir: str | Path, cfg: LMDataConfig, cache_dir: str | Path,
                   splits: tuple[str, ...] = SPLITS, fetch: bool = True) -> dict[str, LMBlocks]:
    """split -> LMBlocks for `splits` (default train/validation/test), fetching missing data
    first unless not `fetch` (see `ensure_dataset`)."""
    files = ensure_dataset("wikitext", Path(data_dir), splits, fetch)
    return {split: LMBlocks(tokenize_split(path, cfg, cache_dir), cfg) for split, path in files.items()}


def describe(splits: dict[str, LMBlocks]) -> str:
    """One line per split for the run log: tokens, blocks, targets."""
    return "\n".join(
        f"wikitext {name}: {ds.n_tokens:,} tokens -> {ds.n_blocks:,} blocks of {ds.block_len} "
        f"({ds.chunking}, L={ds.seq_len}) -> {ds.n_targets:,} targets"
        for name, ds in splits.items())
