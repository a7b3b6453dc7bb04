"""Where the datasets live on disk, and fetching them once from the Hugging Face hub.

Local layout under a data directory (the same as tests/fixtures/data)::

    wikitext-2-raw-v1/{train,validation,test}.txt   original wiki.*.raw format: every line
                                                    starts with a space, blank lines are " "
    snli_1.0/{train,validation,test}.jsonl.gz       one {"premise", "hypothesis", "label"}
                                                    object per line, label 0/1/2

Everything is read from these files. Only when one is missing is ``datasets`` (a dependency
of the project, but absent from offline machines that reuse a system torch) imported to
download the dataset and write it into this layout, so that later runs are offline.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable, Literal

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/grassmann_flows/data/sources.py -> repo
DEFAULT_DATA_DIR = REPO_ROOT / "data"
SPLITS = ("train", "validation", "test")
WIKITEXT_DIR = "wikitext-2-raw-v1"
SNLI_DIR = "snli_1.0"
# hub ids (the canonical names that "wikitext" and "snli" redirect to)
_HUB = {"wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1"), "snli": ("stanfordnlp/snli",)}
_LAYOUT = {"wikitext": f"{WIKITEXT_DIR}/{{train,validation,test}}.txt",
           "snli": f"{SNLI_DIR}/{{train,validation,test}}.jsonl.gz"}


class DataUnavailableError(RuntimeError):
    """A dataset file is missing and could not be fetched from the hub."""


def resolve_data_dir(arg: str | os.PathLike | None = None) -> Path:
    """Data directory: ``arg`` (e.g. --data-dir) if given, else env DATA_DIR, else <repo>/data."""
    return Path(arg or os.environ.get("DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def dataset_files(name: Literal["wikitext", "snli"], data_dir: Path) -> dict[str, Path]:
    """split -> expected file path in the local layout (whether or not it exists)."""
    if name == "wikitext":
        return {s: Path(data_dir) / WIKITEXT_DIR / f"{s}.txt" for s in SPLITS}
    if name == "snli":
        return {s: Path(data_dir) / SNLI_DIR / f"{s}.jsonl.gz" for s in SPLITS}
    raise ValueError(f"unknown dataset {name!r}; choose 'wikitext' or 'snli'")


def data_dir_given(arg: str | os.PathLike | None = None) -> bool:
    """Whether the user named the data directory (``arg``, e.g. --data-dir, or env DATA_DIR):
    then missing files are an error about that directory, never a download."""
    return bool(arg or os.environ.get("DATA_DIR"))


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (one TCP connection to $HF_ENDPOINT, 2 s at most), or None.

    Behind a proxy (HTTPS_PROXY, ALL_PROXY) the direct connection says nothing: None.
    """
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as e:
        return f"{host}:{port} cannot be reached ({type(e).__name__})"
    return None


@functools.lru_cache(maxsize=None)
def hub_blockers() -> tuple[str, ...]:
    """What stops a download from the hub here (checked once per process): every true reason."""
    reasons = []
    try:
        import datasets  # noqa: F401
    except ImportError:
        reasons.append("datasets is not installed (pip install datasets)")
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]
    if offline:
        reasons.append(f"{offline[0]} is set")
    else:
        unreachable = _hub_unreachable()
        if unreachable:
            reasons.append(unreachable)
    return tuple(reasons)


def ensure_dataset(name: Literal["wikitext", "snli"], data_dir: Path, splits: tuple[str, ...] = SPLITS,
                   fetch: bool = True) -> dict[str, Path]:
    """Return split -> local file for `splits`, downloading missing ones from the hub first.

    fetch: False when the user named `data_dir` (see `data_dir_given`): a missing file is
    then reported as such, without going to the hub. Otherwise the hub is asked only when
    nothing stops it (`hub_blockers`: datasets missing, offline, unreachable), so a machine
    without network fails at once. Raises DataUnavailableError with a one-line message.
    """
    files = {s: p for s, p in dataset_files(name, data_dir).items() if s in splits}
    missing = {s: p for s, p in files.items() if not p.is_file()}
    if not missing:
        return files
    listed = ", ".join(str(p) for p in missing.values())
    if not fetch:
        raise DataUnavailableError(
            f"{name} data missing: the data directory given (DATA_DIR / --data-dir) has no {listed}. Point it at "
            f"a directory with the layout {_LAYOUT[name]}, or unset it to fetch the data from the Hugging Face "
            f"hub into {DEFAULT_DATA_DIR}")
    way_out = (f"put the files there, or point DATA_DIR / --data-dir at a directory with the layout "
               f"{_LAYOUT[name]}")
    blockers = hub_blockers()
    if blockers:
        raise DataUnavailableError(f"{name} data missing: {listed}, and the Hugging Face hub cannot be used here "
                                   f"({'; '.join(blockers)}): {way_out}")
    import datasets

    try:
        ds = datasets.load_dataset(*_HUB[name])
        for split, path in missing.items():
            (_write_wikitext if name == "wikitext" else _write_snli)(ds[split], path)
    except Exception as e:  # network/hub errors come in many types; report any as one line
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise DataUnavailableError(f"{name} data missing: {listed}, and fetching it from the Hugging Face hub "
                                   f"failed ({reason}): {way_out}") from e
    return files


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then rename it into place, so an
    interrupted run never leaves a half-written file that a later run would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wikitext_text_to_rows(text: str) -> list[str]:
    """Original wiki.*.raw text -> the rows of HF ``datasets`` wikitext ("" or " text\\n")."""
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the file ends the last row, it starts none
        lines.pop()
    return [line + "\n" if line.strip() else "" for line in lines]


def wikitext_rows_to_text(rows: list[str]) -> str:
    """Inverse of wikitext_text_to_rows: empty rows become the raw format's " " line."""
    return "".join(row if row else " \n" for row in rows)


def _write_wikitext(split_ds, path: Path) -> None:
    rows = list(split_ds["text"])
    text = wikitext_rows_to_text(rows)
    if wikitext_text_to_rows(text) != rows:  # the raw format holds one non-blank line per row
        raise ValueError("hub wikitext rows do not fit the raw one-line-per-row format")
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_snli(split_ds, path: Path) -> None:
    lines = [json.dumps({"premise": p, "hypothesis": h, "label": int(y)}, ensure_ascii=False) + "\n"
             for p, h, y in zip(split_ds["premise"], split_ds["hypothesis"], split_ds["label"])
             if y != -1]  # -1 = no gold label (annotators disagreed); unusable for training/eval
    atomic_write(path, lambda f: _gzip_to(f, "".join(lines).encode("utf-8")))


def _gzip_to(f: io.BufferedWriter, data: bytes) -> None:
    # mtime=0 and no file name: the same rows always give byte-identical files
    with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(data)
