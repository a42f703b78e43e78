"""The training batch: crop-major views plus each metadata column's encoded values and where they are present."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Batch", "Target"]


class Target(NamedTuple):
    """One metadata column of a batch: ``values`` (class ids [B], multi-hot [B, C] or numbers [B]) and ``valid``
    (bool [B], False where the cell is missing)."""

    values: Tensor
    valid: Tensor


@dataclass
class Batch:
    """Row ``crop * B + b`` of the crop tensors holds crop `crop` of sample `b` (the DINOv2 layout).

    ``global_crops`` [n_g*B, C, G, G]; ``local_crops`` [n_l*B, C, L, L] or None; ``masks`` bool [n_g*B, N] (iBOT);
    ``index`` [B] the table rows; ``targets`` {column: Target} for guided and conditioning columns.
    """

    global_crops: Tensor
    local_crops: Tensor | None
    masks: Tensor
    index: Tensor | None = None
    targets: dict[str, Target] = field(default_factory=dict)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        def move(v: Any) -> Any:
            return fn(v) if isinstance(v, Tensor) else v

        kw = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "targets"}
        return Batch(**kw, targets={k: Target(fn(t.values), fn(t.valid)) for k, t in self.targets.items()})

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when ``pin_memory=True``."""
        return self._map(lambda t: t.pin_memory())
