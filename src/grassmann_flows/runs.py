"""Command-line plumbing shared by train/eval entry points: options, names, corpus, errors."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .data.sources import REPO_ROOT, DataUnavailableError, dataset_files, sha256_file
from .models.snli_heads import BackboneUnavailableError
from .utils import distributed
from .utils.checkpoint import CheckpointError

# sha256 of the train split of the stand-in corpus (`reduced/`, see data/README in the
# project docs): runs on it are real but not comparable with the paper's tables.
REDUCED_TRAIN_SHA256 = {
    "wikitext": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "snli": "1cb9b0f7c2ff6a4090a909b1a7e8962b57e11caba3f174fbe2c14157826a8edf",
}
# Size of the official train splits (HF rows / gold-labelled pairs).
FULL_TRAIN_ROWS = {"wikitext": 36_718, "snli": 549_367}
# --quick (QUICK=1 of speedrun.sh): the run is a smoke run; its results.json and config.json
# say "quick": true, and the analysis never sets it beside real runs.
QUICK_HELP = 'mark the run as a smoke run ("quick": true in results.json): never compared with real runs'


def default_cache_dir() -> Path:
    """Tokenised-split cache: $CACHE_DIR or <repo>/cache (data dirs may be read-only)."""
    return Path(os.environ.get("CACHE_DIR", REPO_ROOT / "cache"))


def corpus_label(task: str, data_dir: Path) -> str:
    """'reduced' (the stand-in corpus), 'full' (official train split size) or 'custom'."""
    train = dataset_files(task, data_dir)["train"]
    if sha256_file(train) == REDUCED_TRAIN_SHA256[task]:
        return "reduced"
    if task == "wikitext":
        from .data.wikitext import read_wikitext_rows

        n = len(read_wikitext_rows(train))
    else:
        from .data.snli import read_snli

        n = len(read_snli(train))
    return "full" if n == FULL_TRAIN_ROWS[task] else "custom"


def info(text: str) -> None:
    """Print a start-up line once per run (on rank 0 of a torchrun job)."""
    if distributed.is_rank0():
        print(text, flush=True)


def lr_label(lr: float) -> str:
    """A learning rate as run names spell it: 6e-4, 2.5e-4, 1e-3."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_name(model: str, task: str, seq_len: int | None, n_layers: int | None, seed: int, tag: str = "", *,
             preset: str | None, lr: float, head: str | None = None) -> str:
    """The run directory's name: everything that tells two runs of a grid apart.

    <model>_<task>_L<len>_N<layers>_<preset>_lr<lr>_s<seed>[_<tag>]; a DistilBERT head
    (seq_len None) has no depth or preset of its own: <model>_snli_distilbert[_siamese]_lr<lr>_s<seed>[_<tag>],
    where `head` "siamese" is the Transformer head that encodes the sentences apart.
    """
    if seq_len is None:
        shape = "distilbert" + ("_siamese" if head == "siamese" else "")
    else:
        shape = f"L{seq_len}_N{n_layers}"
    parts = [model, task, shape, *([preset] if preset else []), f"lr{lr_label(lr)}", f"s{seed}", *([tag] if tag else [])]
    return "_".join(parts)


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value), value parsed as bool/int/float/tuple of ints/str."""
    if "=" not in text:
        raise ValueError(f"--opt expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    low = raw.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if "," in raw:
        return key, tuple(int(x) for x in raw.split(",") if x)
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One --flag per dataclass field (kebab-case), defaulting to None = keep the field's default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                                metavar="{true,false}")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Instance of `cls` from the parsed flags that were given (plus overrides)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    return cls(**{**given, **overrides})


def paper_batch_size(seq_len: int) -> int:
    """The paper's batch sizes: 32 at L=128, 16 at L=256 (4,096 tokens); same budget elsewhere."""
    return max(1, 4096 // seq_len)


# The line a run that ran out of GPU memory ends with (the grid's queue reads it).
OOM_LINE = "error: out of GPU memory"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _raised_by_project(e: BaseException) -> bool:
    """Whether the innermost frame that raised `e` is this package's code (a bad knob, a
    missing file), not a library's (an inductor or Triton failure, whose traceback matters)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def error_line(e: BaseException) -> str | None:
    """The one line an expected failure prints, or None for one that keeps its traceback.

    Expected: the project's error types, ValueError / FileNotFoundError raised by its own
    code (a bad knob, a missing file), and running out of GPU memory (OOM_LINE).
    """
    import torch

    if isinstance(e, (DataUnavailableError, BackboneUnavailableError, CheckpointError)) or (
            isinstance(e, (ValueError, FileNotFoundError)) and _raised_by_project(e)):
        return f"error: {e}"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return f"{OOM_LINE}: {' '.join(str(e).split())} (lower --batch-size, or RUNS_PER_GPU for a grid)"
    return None


def cli(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Run `main`, turning expected failures (`error_line`) into one line and exit code 2;
    anything else keeps its traceback."""

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as e:
            line = error_line(e)
            if line is None:
                raise
            print(line, file=sys.stderr)
            return 2

    return wrapped


def open_run(path: str | Path, expect: dict[str, Any], device: Any) -> tuple[dict[str, Any], Path]:
    """Load a run's best.pt (a run directory or a .pt path) and check it is the one asked for.

    expect: summary fields the caller asked for (model, seq_len, ...); a checkpoint
    whose own summary differs is refused, naming the mismatched fields.
    Returns (checkpoint dict with parsed meta, checkpoint path).
    """
    from .utils.checkpoint import config_mismatch, load_checkpoint

    path = Path(path)
    ckpt_path = path / "best.pt" if path.is_dir() else path
    ckpt = load_checkpoint(ckpt_path, device)
    summary = ckpt["meta"].get("summary", {})
    mismatched = config_mismatch({k: summary.get(k) for k in expect}, expect)
    if mismatched:
        raise CheckpointError(f"{ckpt_path} is from another configuration: " + "; ".join(mismatched))
    return ckpt, ckpt_path


def load_weights(model: Any, ckpt: dict[str, Any], ckpt_path: Path) -> None:
    """Strictly load the checkpoint's weights into `model`, failing with one readable line."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_path} does not fit the model it describes: {str(e).splitlines()[0]}") from e


def load_run(path: str | Path, expect: dict[str, Any], device: Any) -> tuple[Any, dict[str, Any], Path]:
    """(model in eval mode on `device`, meta, checkpoint path) of a from-scratch run."""
    from .models import ModelConfig, model_from_config

    ckpt, ckpt_path = open_run(path, expect, device)
    if "model" not in ckpt["meta"]:
        raise CheckpointError(f"{ckpt_path} holds no from-scratch model config")
    # A classifier's own settings (pooling) sit beside its ModelConfig in the run's config.
    model = model_from_config(ModelConfig.from_dict(ckpt["meta"]["model"]), **ckpt["meta"].get("classifier", {}))
    load_weights(model, ckpt, ckpt_path)
    return model.to(device).eval(), ckpt["meta"], ckpt_path
