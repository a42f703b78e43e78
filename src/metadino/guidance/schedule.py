"""λ schedule of the guide gradients (spec §4)."""

from __future__ import annotations

import math

from metadino.errors import UserError

__all__ = ["LAMBDA_SCHEDULES", "guidance_lambda"]

LAMBDA_SCHEDULES = ("sigmoid", "linear", "constant")


def guidance_lambda(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """λ at iteration `step` of `total_steps`.

    λ = 0 before `warmup_steps`; otherwise p = (step − warmup)/max(1, total − warmup) and
    sigmoid: 2/(1+exp(−10p)) − 1 (DANN), linear: p (not clamped, exceeds 1 after `total_steps`), constant: 1.
    """
    if schedule not in LAMBDA_SCHEDULES:
        raise UserError(
            f"guidance.lambda.schedule is {schedule!r}; use one of {', '.join(LAMBDA_SCHEDULES)}."
        )
    if step < warmup_steps:
        return 0.0
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "sigmoid":
        return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
    if schedule == "linear":
        return float(p)
    return 1.0
