"""Watches on a running training that warn once, in one sentence with the remedy, when something is off.

``UniformTargetWatch``: the DINO (CLS) term sits at the uniform fixed point ln K. At that point the teacher's
Sinkhorn-Knopp (or centred softmax) targets are uniform over the K prototypes, the DINO loss has no gradient left, and
the CLS token is trained by iBOT and KoLeo alone. ``DataWaitWatch``: the steps wait for the data loader (a starved GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DataWaitWatch", "UniformTargetWatch"]


@dataclass
class UniformTargetWatch:
    """Counts consecutive steps whose DINO term is within `margin` (relative) of ln K.

    Args:
        out_dim: K, the number of DINO prototypes.
        window: consecutive steps at ln K before the warning.
        margin: relative distance to ln K that still counts as "at ln K" (0.01 = 1 %).
        skip: first steps never counted (the loss starts near ln K in every healthy run too).
    """

    out_dim: int
    window: int = 100
    margin: float = 0.01
    skip: int = 20
    warned: bool = False
    _run: int = field(default=0, repr=False)

    @property
    def ln_k(self) -> float:
        return math.log(self.out_dim)

    def update(self, step: int, dino: float) -> str | None:
        """Feed the DINO term of `step`; returns the warning text once, the first time the window fills."""
        if step < self.skip:
            return None
        self._run = self._run + 1 if abs(dino - self.ln_k) <= self.margin * self.ln_k else 0
        if self.warned or self._run < self.window:
            return None
        self.warned = True
        return (
            f"warning: the DINO (CLS) term has stayed at ln K = {self.ln_k:.3f} (within {100 * self.margin:.0f} %) for "
            f"{self._run} steps up to step {step}: the teacher's targets are uniform over the {self.out_dim} prototypes "
            "and the CLS token is not learning from it. Keep ssl.head.batchnorm: true, lower ssl.teacher_temp (0.025), "
            "freeze the prototypes longer (ssl.freeze_last_layer_steps), or raise train.batch_size; "
            "`metadino eval` on a labelled subset tells whether the CLS still improves."
        )


@dataclass
class DataWaitWatch:
    """Counts consecutive logged intervals whose share of time spent waiting for a batch exceeds `threshold`.

    Args:
        num_workers: the loader's worker processes (named in the warning).
        cores: CPU cores this process may use (named in the warning).
        threshold: share of an interval's wall time spent waiting that counts as starved.
        intervals: consecutive starved intervals before the warning.
        skip: first intervals never counted (they include the workers' start-up).
    """

    num_workers: int
    cores: int
    threshold: float = 0.3
    intervals: int = 3
    skip: int = 1
    warned: bool = False
    _seen: int = field(default=0, repr=False)
    _run: int = field(default=0, repr=False)

    def update(self, step: int, share: float) -> str | None:
        """Feed the data-wait share of the interval ending at `step`; returns the warning text once."""
        self._seen += 1
        if self._seen <= self.skip:
            return None
        self._run = self._run + 1 if share > self.threshold else 0
        if self.warned or self._run < self.intervals:
            return None
        self.warned = True
        return (
            f"warning: up to step {step} the training waited for data {100 * share:.0f} % of the time "
            f"({self._run} logged intervals in a row above {100 * self.threshold:.0f} %): the loader's "
            f"{self.num_workers} worker processes do not keep up with the model. Raise train.num_workers (this "
            f"process may use {self.cores} cores), use fewer or smaller crops (crops.n_local, crops.local_size), or "
            "store the images nearer the training size; data_wait_share in metrics.jsonl follows it."
        )
