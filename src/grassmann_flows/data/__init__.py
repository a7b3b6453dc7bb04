"""Data for the two tasks: WikiText-2 language modelling and SNLI, plus offline tokenizers.

Typical use::

    data_dir = resolve_data_dir(args.data_dir)
    splits = load_lm_splits(data_dir, LMDataConfig(seq_len=128), cache_dir)
    print(describe(splits))
"""
from .snli import (LABELS, DataFormatError, SNLIDataConfig, SNLIDataset, load_snli_splits,
                   read_snli, tokenize_snli)
from .sources import (DEFAULT_DATA_DIR, DataUnavailableError, dataset_files, ensure_dataset,
                      resolve_data_dir)
from .tokenizers import TOKENIZER_NAMES, load_tokenizer, tokenizer_fingerprint
from .wikitext import (IGNORE_INDEX, LMBlocks, LMDataConfig, describe, load_lm_splits,
                       read_wikitext_rows, tokenize_split)

__all__ = [
    "LABELS", "DataFormatError", "SNLIDataConfig", "SNLIDataset", "load_snli_splits", "read_snli",
    "tokenize_snli", "DEFAULT_DATA_DIR", "DataUnavailableError", "dataset_files", "ensure_dataset",
    "resolve_data_dir", "TOKENIZER_NAMES", "load_tokenizer", "tokenizer_fingerprint",
    "IGNORE_INDEX", "LMBlocks", "LMDataConfig", "describe", "load_lm_splits", "read_wikitext_rows",
    "tokenize_split",
]
