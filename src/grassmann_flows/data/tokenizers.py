"""Offline tokenizers built from the vocab files vendored in ``tokenizer_files/``.

Nothing here touches the network: the files ship with the package (see
``tokenizer_files/LICENSES.md`` for their sources and licences).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizerFast, GPT2TokenizerFast, PreTrainedTokenizerFast

TOKENIZER_FILES_DIR = Path(__file__).resolve().parent / "tokenizer_files"

# name -> (tokenizer class, files that define the vocabulary)
_TOKENIZERS = {
    "bert-base-uncased": (BertTokenizerFast, ("vocab.txt", "tokenizer_config.json")),
    "gpt2": (GPT2TokenizerFast, ("vocab.json", "merges.txt", "tokenizer_config.json")),
}
TOKENIZER_NAMES = tuple(_TOKENIZERS)


def _check_name(name: str) -> None:
    if name not in _TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZER_NAMES)}")


@lru_cache(maxsize=None)
def load_tokenizer(name: str = "bert-base-uncased") -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from the vendored files, without the network.

    ``from_pretrained`` on the local directory is used rather than the constructor because
    the constructor's keyword changed between transformers 4 (``vocab_file=``) and 5
    (``vocab=``), and in 5 the old keyword is silently ignored, giving an EMPTY vocabulary.
    Results: "Hello world" -> [101, 7592, 2088, 102] (bert-base-uncased, with [CLS]/[SEP]),
    [15496, 995] (gpt2); ``vocab_size`` 30522 / 50257.
    The returned object is shared (cached): do not mutate it.
    """
    _check_name(name)
    cls, _ = _TOKENIZERS[name]
    tok = cls.from_pretrained(str(TOKENIZER_FILES_DIR / name), local_files_only=True)
    if tok.vocab_size < 1000:  # guard against the silent empty-vocabulary failure above
        raise RuntimeError(f"tokenizer {name!r} loaded with only {tok.vocab_size} tokens")
    return tok


@lru_cache(maxsize=None)
def tokenizer_fingerprint(name: str) -> str:
    """sha256 over the vendored files of tokenizer ``name``; part of every token cache key."""
    _check_name(name)
    h = hashlib.sha256()
    for fname in _TOKENIZERS[name][1]:
        h.update(fname.encode() + b"\0" + (TOKENIZER_FILES_DIR / name / fname).read_bytes())
    return h.hexdigest()
