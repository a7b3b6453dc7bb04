"""Process-group helpers for DistributedDataParallel runs launched by torchrun.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every worker. A plain `python -m ...`
sets none of them; `init` then does nothing and every helper below falls back to the
single-process answer, so the training loop needs no `if distributed:` branches.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

# Host-side agreement (stop flags, RNG states, epoch metrics) goes through a gloo group:
# with nccl as the main backend it would otherwise need a GPU tensor and a host sync.
_cpu_group: Any = None


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    Returns the device this process trains on: cuda:LOCAL_RANK under torchrun on CUDA.
    A second call (work before training, such as a feature cache, joins first) only
    returns the device.
    """
    global _cpu_group
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    # Before init (start-up logging) torchrun's RANK already says which worker this is.
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier(group=_cpu_group)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: ranks must stop at the same step."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group)
    return bool(t.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `t` across ranks (a NaN on any rank reaches every rank)."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)  # SUM: ReduceOp.AVG exists on nccl only
    return t / dist.get_world_size()


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (what the others pass is ignored)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def cleanup() -> None:
    global _cpu_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _cpu_group = None
