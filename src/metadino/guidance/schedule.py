"""λ schedule of the guide gradients (DANN, Ganin & Lempitsky 2015, as used by FINO)."""

from __future__ import annotations

import math

from metadino.errors import UserError

__all__ = ["LAMBDA_SCHEDULES", "LAMBDA_STARTS", "guidance_lambda", "lambda_ramp_start"]

LAMBDA_SCHEDULES = ("sigmoid", "linear", "constant")
LAMBDA_STARTS = ("step0", "unfreeze")


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


def lambda_ramp_start(warmup_steps: int, *, start: str, unfreeze_step: int) -> int:
    """The step at which the λ ramp begins (the `warmup_steps` argument of :func:`guidance_lambda`).

    ``step0``: `warmup_steps` (the released code: the ramp counts from iteration 0). ``unfreeze``: the later of
    `warmup_steps` and `unfreeze_step`, the first step the backbone trains (end of the heads-only stage) — the
    FINO paper counts its DANN ramp from the unfreeze point, whereas in the released FMoW recipe λ is already 0.96
    when the backbone unfreezes.
    """
    if start not in LAMBDA_STARTS:
        raise UserError(f"guidance.lambda.start is {start!r}; use one of {', '.join(LAMBDA_STARTS)}.")
    return max(warmup_steps, unfreeze_step) if start == "unfreeze" else warmup_steps
