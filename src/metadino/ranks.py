"""How many processes train together (torch.distributed), for the code that must agree across them.

A base-layer helper: losses, models, guidance and training all ask it, and one process never touches
torch.distributed beyond ``is_initialized``.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_distributed", "world_size"]


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Processes in `group` (the default group when None) once torch.distributed is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def is_distributed() -> bool:
    """More than one process in the default group."""
    return world_size() > 1
