"""torchrun support shared by the commands that spread work over ranks (``mat-fast inpaint``
folder mode, ``mat-fast evaluate``): the process group (gloo: only CPU objects are
exchanged, so CPU-only runs work too), one device per rank, disjoint deterministic shards,
and failures that stop every rank instead of leaving the others waiting."""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import torch

__all__ = ["agree", "finish", "gather", "init", "rank_device", "shard"]


def init() -> Tuple[int, int, int]:
    """(rank, world, local_rank): torchrun's, with a gloo group; (0, 1, 0) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def finish() -> None:
    """Leave the process group, if one was made."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(name: str, local_rank: int) -> torch.device:
    """This rank's device: 'auto' and 'cuda' take GPU ``local_rank`` (one device per rank)."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{local_rank % torch.cuda.device_count()}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    return device


def agree(world: int, error: Optional[str]) -> None:
    """Every rank learns whether any rank failed, so none waits forever on the others."""
    if world > 1:
        import torch.distributed as dist

        errors = [None] * world
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error:
        raise ValueError(error)


def gather(obj: Any, rank: int, world: int, everyone: bool = False) -> Optional[List[Any]]:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others; on every rank
    with ``everyone``)."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    if everyone:
        gathered = [None] * world
        dist.all_gather_object(gathered, obj)
        return gathered
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def shard(items: Sequence, rank: int, world: int) -> list:
    """Every world-th item from ``rank``: disjoint shards whose union is ``items``."""
    return list(items[rank::world])
