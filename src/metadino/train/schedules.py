"""Training schedules as pure functions of the global step.

Nothing here holds state, so a resumed run recomputes exactly the values an uninterrupted run
would have used at the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metadino.guidance.schedule import guidance_lambda


def warmup_cosine(step: int, *, total: int, peak: float, end: float, warmup: int = 0, start: float = 0.0) -> float:
    """Linear warm-up from `start` to `peak` over `warmup` steps, then cosine from `peak` to `end`.

    The cosine reaches `end` at the last step (`total - 1`) and stays there afterwards.
    """
    if step < warmup:
        return start + (peak - start) * step / warmup
    span = max(total - 1 - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return end + 0.5 * (peak - end) * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, *, start: float, end: float, warmup: int) -> float:
    """`start` -> `end` linearly over `warmup` steps, then constant `end`."""
    if warmup <= 0 or step >= warmup:
        return end
    return start + (end - start) * step / warmup


def backbone_lr_scale(step: int, *, heads_only_steps: int, ramp_steps: int) -> float:
    """Two-stage finetune (FINO, arXiv 2606.05107): 0 during the heads-only stage, then a linear ramp to 1.

    At ``step = heads_only_steps + k`` (k < ramp_steps) the scale is ``(k + 1) / ramp_steps``.
    """
    if step < heads_only_steps:
        return 0.0
    if step < heads_only_steps + ramp_steps:
        return (step - heads_only_steps + 1) / ramp_steps
    return 1.0


@dataclass(frozen=True)
class StepSchedule:
    """Every scheduled scalar of a run as a pure function of the step (built from the config by the factory)."""

    total: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    ema_momentum: float
    ema_momentum_end: float
    teacher_temp: float
    warmup_teacher_temp: float
    teacher_temp_warmup_steps: int
    freeze_last_layer_steps: int
    heads_only_steps: int
    ramp_steps: int
    guide_lambda_schedule: str
    guide_lambda_start: int

    def __call__(self, step: int) -> dict[str, float]:
        lr = warmup_cosine(step, total=self.total, peak=self.lr, end=self.min_lr, warmup=self.warmup_steps)
        return {
            "guide_lambda": guidance_lambda(step, self.total, self.guide_lambda_schedule, self.guide_lambda_start),
            "backbone_scale": backbone_lr_scale(step, heads_only_steps=self.heads_only_steps, ramp_steps=self.ramp_steps),
            "lr": lr,
            "last_layer_lr": 0.0 if step < self.freeze_last_layer_steps else lr,
            "weight_decay": warmup_cosine(step, total=self.total, peak=self.weight_decay, end=self.weight_decay_end),
            "momentum": warmup_cosine(step, total=self.total, peak=self.ema_momentum, end=self.ema_momentum_end),
            "teacher_temp": linear_warmup(step, start=self.warmup_teacher_temp, end=self.teacher_temp,
                                          warmup=self.teacher_temp_warmup_steps),
        }
