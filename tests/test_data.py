"""Data layer: offline tokenizers, local data layout, token caches, LM blocks, SNLI."""
import gzip
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from grassmann_flows.data import (
    LABELS, DataFormatError, DataUnavailableError, LMBlocks, LMDataConfig, SNLIDataConfig, SNLIDataset,
    describe, ensure_dataset, load_lm_splits, load_snli_splits, load_tokenizer, read_snli,
    read_wikitext_rows, resolve_data_dir, tokenize_snli, tokenize_split,
)
from grassmann_flows.data import sources, wikitext

FIXTURES = Path(__file__).parent / "fixtures" / "data"
WIKI_TRAIN = FIXTURES / "wikitext-2-raw-v1" / "train.txt"
SNLI_TRAIN = FIXTURES / "snli_1.0" / "train.jsonl.gz"


def write_jsonl_gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress("".join(l + "\n" for l in lines).encode()))
    return path


# ---------------------------------------------------------------- tokenizers

@pytest.mark.parametrize("name, ids, vocab", [
    ("bert-base-uncased", [101, 7592, 2088, 102], 30522),
    ("gpt2", [15496, 995], 50257),
])
def test_tokenizer_offline(name, ids, vocab):
    tok = load_tokenizer(name)
    assert tok("Hello world")["input_ids"] == ids
    assert tok.vocab_size == vocab and len(tok) == vocab
    assert load_tokenizer(name) is tok  # cached


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="bert-base-uncased, gpt2"):
        load_tokenizer("roberta")


# ---------------------------------------------------------------- sources

def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert resolve_data_dir(None) == sources.REPO_ROOT / "data"
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


@pytest.fixture(autouse=True)
def fresh_hub_check():
    """hub_blockers is checked once per process: each test checks afresh."""
    sources.hub_blockers.cache_clear()
    yield
    sources.hub_blockers.cache_clear()


def closed_port() -> int:
    """A local TCP port nothing listens on: connecting to it is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name, file", [("wikitext", "wikitext-2-raw-v1/train.txt"),
                                         ("snli", "snli_1.0/test.jsonl.gz")])
def test_missing_data_without_datasets(monkeypatch, tmp_path, name, file):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    monkeypatch.setattr(sources, "_hub_unreachable", lambda: None)  # the network is there
    with pytest.raises(DataUnavailableError) as e:
        ensure_dataset(name, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / file) in msg
    assert "--data-dir" in msg and "DATA_DIR" in msg  # way 1: local files
    assert "pip install datasets" in msg and "Hugging Face hub" in msg  # way 2: the hub
    assert "reached" not in msg  # only what is true


def test_missing_data_without_network_says_so_and_never_asks_the_hub(monkeypatch, tmp_path):
    calls = []  # datasets is installed...
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a: calls.append(a)))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # ...and the hub is unreachable
    with pytest.raises(DataUnavailableError) as e:
        ensure_dataset("wikitext", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "cannot be reached" in msg and "DATA_DIR" in msg
    assert "pip install" not in msg and calls == []  # datasets is there; no download was tried
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources.hub_blockers.cache_clear()
    with pytest.raises(DataUnavailableError, match="HF_HUB_OFFLINE is set"):
        ensure_dataset("wikitext", tmp_path)


def test_a_data_dir_the_user_gave_is_never_filled_from_the_hub(monkeypatch, tmp_path):
    calls = fake_datasets(monkeypatch, {})
    with pytest.raises(DataUnavailableError) as e:
        ensure_dataset("snli", tmp_path / "typo", fetch=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "typo" / "snli_1.0" / "train.jsonl.gz") in msg
    assert "DATA_DIR" in msg and "datasets" not in msg and calls == []
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert sources.data_dir_given("x") and not sources.data_dir_given(None)
    monkeypatch.setenv("DATA_DIR", "y")
    assert sources.data_dir_given(None)


def test_one_split_is_enough_when_only_it_is_asked_for(tmp_path):
    (tmp_path / "snli_1.0").mkdir()
    (tmp_path / "snli_1.0" / "test.jsonl.gz").write_bytes((FIXTURES / "snli_1.0" / "test.jsonl.gz").read_bytes())
    assert set(ensure_dataset("snli", tmp_path, ("test",), fetch=False)) == {"test"}
    with pytest.raises(DataUnavailableError, match="train.jsonl.gz"):
        ensure_dataset("snli", tmp_path, fetch=False)


def fake_datasets(monkeypatch, tables: dict) -> list:
    """Install a stand-in `datasets` module whose load_dataset returns `tables`, with the hub
    reachable."""
    monkeypatch.setattr(sources, "_hub_unreachable", lambda: None)
    calls = []

    def load_dataset(*args):
        calls.append(args)
        if isinstance(tables, Exception):
            raise tables
        return tables

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_fetch_writes_wikitext_layout(monkeypatch, tmp_path):
    rows = ["", " = Title = \n", "", " Hello world , it 's 1 @.@ 5 .\n", "", " Bye .\n"]
    calls = fake_datasets(monkeypatch, {s: {"text": rows} for s in ("train", "validation", "test")})
    files = ensure_dataset("wikitext", tmp_path)
    assert files["train"] == tmp_path / "wikitext-2-raw-v1" / "train.txt"
    assert files["train"].read_text() == " \n = Title = \n \n Hello world , it 's 1 @.@ 5 .\n \n Bye .\n"
    assert read_wikitext_rows(files["test"]) == rows
    ensure_dataset("wikitext", tmp_path)  # now offline: no second download
    assert len(calls) == 1


def test_hub_fetch_writes_snli_layout(monkeypatch, tmp_path):
    table = {"premise": ["A man.", "A dog.", "A cat."], "hypothesis": ["X.", "Y.", "Z."],
             "label": [0, -1, 2]}
    fake_datasets(monkeypatch, {s: table for s in ("train", "validation", "test")})
    files = ensure_dataset("snli", tmp_path)
    raw = files["validation"].read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0: reproducible bytes
    assert read_snli(files["validation"]) == [
        {"premise": "A man.", "hypothesis": "X.", "label": 0},
        {"premise": "A cat.", "hypothesis": "Z.", "label": 2}]


def test_hub_failure_is_one_line(monkeypatch, tmp_path):
    fake_datasets(monkeypatch, ConnectionError("no route to host\nretry later"))
    with pytest.raises(DataUnavailableError, match="from the Hugging Face hub failed .ConnectionError") as e:
        ensure_dataset("snli", tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- wikitext

def test_read_wikitext_rows():
    text = WIKI_TRAIN.read_text()
    rows = read_wikitext_rows(WIKI_TRAIN)
    assert len(rows) == text.count("\n")
    assert all(r == "" or (r.startswith(" ") and r.endswith("\n")) for r in rows)
    assert sources.wikitext_rows_to_text(rows) == text


@pytest.mark.parametrize("name", ["bert-base-uncased", "gpt2"])
def test_pieces_tokenize_like_whole_text(name):
    text = "\n\n".join(read_wikitext_rows(WIKI_TRAIN))
    backend = load_tokenizer(name).backend_tokenizer
    whole = backend.encode(text, add_special_tokens=False).ids
    pieces = wikitext.split_text(text, piece_chars=50)
    assert len(pieces) > 100 and "".join(pieces) == text
    assert sum((backend.encode(p, add_special_tokens=False).ids for p in pieces), []) == whole
    assert wikitext.encode_text(text, name, add_special_tokens=False).tolist() == whole
    assert wikitext.encode_text(text, name, add_special_tokens=True).tolist() == \
        load_tokenizer(name)(text, verbose=False)["input_ids"]


@pytest.mark.parametrize("name, dtype", [("bert-base-uncased", np.uint16), ("gpt2", np.int32)])
def test_tokenize_split_dtype(tmp_path, name, dtype):
    ids = tokenize_split(WIKI_TRAIN, LMDataConfig(tokenizer=name), tmp_path)
    assert ids.dtype == dtype and ids.ndim == 1 and len(ids) > 4000


@pytest.mark.parametrize("seq_len", [16, 33])
def test_blocks_l_plus_1(tmp_path, seq_len):
    cfg = LMDataConfig(seq_len=seq_len, chunking="l_plus_1")
    tokens = np.asarray(tokenize_split(WIKI_TRAIN, cfg, tmp_path), dtype=np.int64)
    ds = LMBlocks(tokens, cfg)
    assert ds.n_tokens == len(tokens)
    assert ds.n_blocks == len(ds) == len(tokens) // (seq_len + 1)
    assert ds.n_targets == ds.n_blocks * seq_len
    for i in (0, 1, ds.n_blocks - 1):
        x, y = ds[i]
        start = i * (seq_len + 1)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (seq_len,)
        assert x.tolist() == tokens[start:start + seq_len].tolist()
        assert y.tolist() == tokens[start + 1:start + seq_len + 1].tolist()
    with pytest.raises(IndexError):
        ds[ds.n_blocks]


@pytest.mark.parametrize("seq_len", [16, 33])
def test_blocks_l_shift(tmp_path, seq_len):
    cfg = LMDataConfig(seq_len=seq_len, chunking="l_shift")
    tokens = np.asarray(tokenize_split(WIKI_TRAIN, cfg, tmp_path), dtype=np.int64)
    ds = LMBlocks(tokens, cfg)
    assert ds.n_blocks == len(ds) == len(tokens) // seq_len
    assert ds.n_targets == ds.n_blocks * (seq_len - 1)
    for i in (0, 1, ds.n_blocks - 1):
        x, y = ds[i]
        start = i * seq_len
        assert x.shape == y.shape == (seq_len,)
        assert x.tolist() == tokens[start:start + seq_len].tolist()
        assert y[:-1].tolist() == tokens[start + 1:start + seq_len].tolist() and y[-1] == -100
    assert sum(int((ds[i][1] != -100).sum()) for i in range(len(ds))) == ds.n_targets


def test_token_cache_hit(tmp_path, monkeypatch):
    cfg = LMDataConfig()
    first = tokenize_split(WIKI_TRAIN, cfg, tmp_path)
    (cache,) = tmp_path.glob("*.npy")
    mtime = cache.stat().st_mtime_ns

    def no_tokenizing(*a, **k):
        raise AssertionError("re-tokenized despite a cache")

    monkeypatch.setattr(wikitext, "encode_text", no_tokenizing)
    # other seq_len / chunking reuse the same token cache
    second = tokenize_split(WIKI_TRAIN, LMDataConfig(seq_len=64, chunking="l_shift"), tmp_path)
    assert np.array_equal(first, second) and cache.stat().st_mtime_ns == mtime
    monkeypatch.undo()
    tokenize_split(WIKI_TRAIN, LMDataConfig(keep_empty_lines=False), tmp_path)  # new key
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_load_lm_splits_and_describe(tmp_path):
    splits = load_lm_splits(FIXTURES, LMDataConfig(seq_len=32), tmp_path / "cache")
    assert list(splits) == ["train", "validation", "test"]
    lines = describe(splits).splitlines()
    assert len(lines) == 3 and lines[0].startswith("wikitext train: ")
    assert f"{splits['test'].n_tokens:,} tokens" in lines[2]


# ---------------------------------------------------------------- snli

def test_read_snli_fixture():
    rows = read_snli(SNLI_TRAIN)
    assert len(rows) == 96 and {r["label"] for r in rows} == {0, 1, 2} and len(LABELS) == 3
    assert set(rows[0]) == {"premise", "hypothesis", "label"}


def test_read_snli_drops_unlabelled(tmp_path):
    p = write_jsonl_gz(tmp_path / "s.jsonl.gz", [
        json.dumps({"premise": "a", "hypothesis": "b", "label": -1}),
        json.dumps({"premise": "c", "hypothesis": "d", "label": 1}), ""])
    assert read_snli(p) == [{"premise": "c", "hypothesis": "d", "label": 1}]


GOOD = json.dumps({"premise": "a", "hypothesis": "b", "label": 0})


@pytest.mark.parametrize("lines, where, what", [
    ([GOOD, '{"premise": "a", "hypothesis": '], ":2:", "bad JSON"),
    ([GOOD, GOOD, json.dumps({"premise": "a", "hypothesis": "b", "label": 3})], ":3:", "unknown label 3"),
    ([json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral"})], ":1:", "unknown label 'neutral'"),
    ([json.dumps({"premise": "a", "label": 0})], ":1:", "missing field(s) hypothesis"),
    ([json.dumps({"premise": "a", "hypothesis": "b", "label": -1})], ":1:", "empty split"),
    ([], ":0:", "empty split"),
])
def test_read_snli_malformed(tmp_path, lines, where, what):
    p = write_jsonl_gz(tmp_path / "bad.jsonl.gz", lines)
    with pytest.raises(DataFormatError) as e:
        read_snli(p)
    assert f"{p}{where}" in str(e.value) and what in str(e.value)


def test_read_snli_not_gzip(tmp_path):
    p = tmp_path / "plain.jsonl.gz"
    p.write_text(GOOD + "\n")
    with pytest.raises(DataFormatError, match="unreadable"):
        read_snli(p)


def test_snli_pair(tmp_path):
    cfg = SNLIDataConfig(max_len=40)
    arrays = tokenize_snli(SNLI_TRAIN, cfg, tmp_path)
    assert arrays["input_ids"].shape == arrays["attention_mask"].shape == (96, 40)
    assert (arrays["input_ids"].dtype, arrays["attention_mask"].dtype, arrays["labels"].dtype) == \
        (np.int32, np.uint8, np.int64)
    row = read_snli(SNLI_TRAIN)[0]
    expect = load_tokenizer("bert-base-uncased")(row["premise"], row["hypothesis"])["input_ids"]
    assert arrays["input_ids"][0, :len(expect)].tolist() == expect and arrays["attention_mask"][0].sum() == len(expect)
    assert (arrays["input_ids"][0, len(expect):] == 0).all()  # [PAD]
    item = SNLIDataset(arrays)[0]
    assert item["input_ids"].dtype == torch.int64 and item["labels"].shape == () and item["labels"] == row["label"]
    again = tokenize_snli(SNLI_TRAIN, cfg, tmp_path)  # from the cache
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays) and len(list(tmp_path.glob("*.npz"))) == 1


def test_snli_pair_truncates(tmp_path):
    ids = tokenize_snli(SNLI_TRAIN, SNLIDataConfig(max_len=12), tmp_path)["input_ids"]
    assert (ids[:, 0] == 101).all() and ((ids == 102).sum(1) == 2).all()  # both [SEP] survive


def test_snli_separate_and_splits(tmp_path):
    cfg = SNLIDataConfig(encoding="separate", sent_len=20)
    splits = load_snli_splits(FIXTURES, cfg, tmp_path)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [96, 48, 48]
    item = splits["validation"][3]
    assert set(item) == {"premise_ids", "premise_mask", "hypothesis_ids", "hypothesis_mask", "labels"}
    assert item["premise_ids"].shape == item["hypothesis_mask"].shape == (20,)
    assert item["premise_ids"][0] == 101 and item["hypothesis_ids"][0] == 101


def test_snli_needs_sep_and_pad(tmp_path):
    with pytest.raises(ValueError, match="gpt2"):
        tokenize_snli(SNLI_TRAIN, SNLIDataConfig(tokenizer="gpt2"), tmp_path)


def test_wikitext_tokenization_ignores_truncation_left_by_snli(tmp_path):
    """The cached tokenizer is shared: SNLI's truncating, padding call must not leak into
    the LM stream tokenized afterwards in the same process."""
    from grassmann_flows.data.snli import SNLIDataConfig, tokenize_snli
    from grassmann_flows.data.wikitext import LMDataConfig, tokenize_split

    wiki = FIXTURES / "wikitext-2-raw-v1" / "train.txt"
    before = np.array(tokenize_split(wiki, LMDataConfig(), tmp_path / "a"))
    tokenize_snli(FIXTURES / "snli_1.0" / "train.jsonl.gz", SNLIDataConfig(max_len=16), tmp_path / "b")
    after = np.array(tokenize_split(wiki, LMDataConfig(), tmp_path / "c"))
    assert np.array_equal(before, after)
