"""Which torch device a command runs on (a base-layer helper: training, evaluation and embedding share it)."""

from __future__ import annotations

import os

import torch

from metadino.errors import UserError

__all__ = ["resolve_device", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one: a SLURM or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(name: str, local_rank: int = 0, *, key: str = "train.device") -> torch.device:
    """``auto`` picks CUDA (this process's local rank), then MPS, then CPU; ``cuda`` means this rank's GPU.

    `key` names the config key or flag in the message when CUDA is asked for but absent.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config key '{key}': '{name}' was asked for but CUDA is not available here; use auto or cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
