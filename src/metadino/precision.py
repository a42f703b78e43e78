"""fp32 regions inside autocast: losses, softmax, Sinkhorn-Knopp and batch statistics never run in bf16/fp16.

A base-layer helper (like `errors`): losses, models and guidance all use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["full_precision"]


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast on `device` for the block (a no-op when autocast is off).

    Autocast lowers matmul-like ops (einsum, mm, linear) to bf16 even on fp32 inputs, so `.float()` alone
    does not keep a loss in fp32: a DINO term of ln 4096 = 8.318 would be logged as 8.312.
    """
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield
