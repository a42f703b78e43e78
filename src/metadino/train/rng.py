"""Every rank's torch RNG state, for exact resume (drop-path and other in-model randomness)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from metadino.ranks import is_distributed

__all__ = ["capture_rng", "gather_rng", "restore_rng"]


def capture_rng(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng(device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's state, in rank order (a collective: all ranks call it)."""
    mine = capture_rng(device)
    if not is_distributed():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, {k: v.cpu() for k, v in mine.items()})
    return out
