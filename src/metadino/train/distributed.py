"""Process-group glue for `torchrun` (DDP). Single-process runs never touch torch.distributed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from metadino.ranks import is_distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Initialise the default group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank (used so all ranks stop together)."""
    if not is_distributed():
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0.0


def all_ranks_finite(flags: torch.Tensor) -> list[bool]:
    """For a bool tensor of flags on this rank, whether each holds on every rank: one all-reduce and one host sync
    (the step's only one)."""
    t = (~flags).to(torch.float32)
    if is_distributed():
        dist.all_reduce(t)
    return [v == 0.0 for v in t.tolist()]


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over ranks (for logging only)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
