"""DistributedDataParallel set-up and episode sharding by rank.

``torchrun --nproc_per_node N -m dpnet.train ...`` starts N processes with the ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` environment of torchrun's
contract; :func:`setup_distributed` reads it and joins the process group (gloo on CPU, NCCL on
CUDA). Without that environment everything runs as a single process (rank 0 of 1).

Sharding: at optimisation step ``s`` rank ``r`` of ``W`` trains on the ``batch_size`` episodes
that follow ``(s * W + r) * batch_size``, so the W ranks together see W x batch_size distinct
episodes per step and the sequence does not depend on timing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dpnet.device import resolve_device

__all__ = [
    "DistributedContext",
    "any_rank",
    "setup_distributed",
    "shard_episode_indices",
    "synchronize",
    "teardown_distributed",
    "wrap_model",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) training job.

    Attributes:
        rank: global rank 0..W-1.
        world_size: W, the number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the torch device this rank computes on.
        owns_group: this context created the process group and must destroy it.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates, writes checkpoints and reports progress."""
        return self.rank == 0


def setup_distributed(device: str) -> DistributedContext:
    """Join the torchrun process group if the environment describes one.

    Args:
        device: ``auto``, ``cpu`` or ``cuda`` (see :func:`resolve_device`).

    Returns:
        The context; ``world_size == 1`` without torchrun's environment.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, torch_device)
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, torch_device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, torch_device, owns_group=True)


def teardown_distributed(context: DistributedContext) -> None:
    """Wait for every rank, then leave the process group if this context created it."""
    if context.owns_group:
        dist.barrier()
        dist.destroy_process_group()


def synchronize(context: DistributedContext) -> None:
    """Barrier across ranks (no-op in a single process)."""
    if context.world_size > 1:
        dist.barrier()


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank if ``flag`` is true on any (so that all ranks stop together)."""
    if context.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` itself in a single process, else a DistributedDataParallel around it."""
    if context.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard_episode_indices(
    step: int, batch_size: int, context: DistributedContext, num_episodes: int
) -> list[int]:
    """Episode indices of ``step`` for this rank (wrapping around the dataset).

    >>> ctx = DistributedContext(1, 2, 1, torch.device("cpu"))
    >>> shard_episode_indices(3, 2, ctx, 100)
    [14, 15]
    """
    first = (step * context.world_size + context.rank) * batch_size
    return [(first + offset) % num_episodes for offset in range(batch_size)]
