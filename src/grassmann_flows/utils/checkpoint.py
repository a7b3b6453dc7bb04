"""Checkpoints: a state_dict plus JSON metadata, written atomically, read safely.

Format (a dict saved with torch.save): {"model": state_dict, "optimizer": state_dict
or None, "rng": [RNG states (tensors) of each training process, index = rank], "meta":
a JSON string}. Loading uses `weights_only=True`, so a pickle that would run code is
refused, never executed.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.sources import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, unsafe, or from another configuration."""


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG the training loop draws from, as CPU tensors and plain values.

    device: the process's training device; on CUDA its generator is saved ("cuda"), and
    only its own, so that a resume may see fewer (or other) GPUs than the save did.
    """
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": json.dumps(random.getstate()),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what `rng_state` captured; the CUDA generator onto `device` when it is a GPU.

    The states must be CPU tensors (load checkpoints with map_location="cpu"): torch's
    setters take nothing else. Files written before the per-device state hold a list with
    one state per GPU then visible: the training device's entry is restored, if it exists.
    """
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if isinstance(cuda, (list, tuple)):
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, index)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    rng: list[dict[str, Any]] | None = None,
) -> None:
    """Save model (and optimizer, RNG) state with JSON-serialisable `meta`.

    rng: the RNG states of every rank of a distributed run (default: this process's).
    """
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng if rng is not None else [rng_state()],
        "meta": json.dumps(meta, sort_keys=True),
    }
    # Temp file + rename: a crash (even SIGKILL) never leaves a torn checkpoint behind.
    atomic_write(Path(path), lambda f: torch.save(ckpt, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; `meta` comes back as a dict.

    Raises CheckpointError with one readable line for a missing, truncated, corrupt
    or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refused it: it is no torch checkpoint, or it holds objects whose
        # unpickling could run code. Either way it is not loaded.
        raise CheckpointError(
            f"refusing to load {path}: not a plain-weights checkpoint (weights_only=True rejected it)"
        ) from e
    except Exception as e:  # torn zip (RuntimeError, or OSError EINVAL from a seek past its end), ...
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({reason}); "
                              f"it cannot be used, delete it or restore a copy") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(f"{path} is not a grassmann-flows checkpoint (no model/meta entries)")
    ckpt["meta"] = json.loads(ckpt["meta"])
    if isinstance(ckpt.get("rng"), dict):  # written before per-rank states: one process's
        ckpt["rng"] = [ckpt["rng"]]
    return ckpt


def config_mismatch(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_mismatch(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (checkpoint {a!r}, now {b!r})")
    return out
