"""λ schedule (spec §4), parity with `lambda/*`."""

from __future__ import annotations

import math

import pytest
import torch

from metadino.errors import UserError
from metadino.guidance.schedule import guidance_lambda

CASES = {
    "sigmoid_T25000": ("sigmoid", 25000, 0),
    "linear_T25000": ("linear", 25000, 0),
    "constant_T25000": ("constant", 25000, 0),
    "sigmoid_T25000_warmup1000": ("sigmoid", 25000, 1000),
    "sigmoid_T67500": ("sigmoid", 67500, 0),
}


@pytest.mark.parametrize("key", list(CASES))
def test_lambda_matches_reference(reference_values, key):
    schedule, total, warmup = CASES[key]
    iters = reference_values["lambda/iters"].tolist()
    got = torch.tensor([guidance_lambda(i, total, schedule, warmup) for i in iters], dtype=torch.float64)
    torch.testing.assert_close(got, reference_values[f"lambda/{key}"], rtol=1e-12, atol=1e-15)


def test_lambda_shape_of_the_schedules():
    assert guidance_lambda(0, 100, "sigmoid") == 0.0  # no guide gradient at the start
    assert guidance_lambda(150, 100, "linear") == pytest.approx(1.5)  # linear is not clamped
    assert guidance_lambda(0, 100, "constant") == 1.0
    assert guidance_lambda(9, 100, "constant", warmup_steps=10) == 0.0  # warm-up zeroes every schedule
    assert guidance_lambda(55, 100, "linear", warmup_steps=10) == pytest.approx(0.5)
    assert guidance_lambda(5, 1, "linear", warmup_steps=1) == pytest.approx(4.0)  # max(1, T - warmup)
    assert guidance_lambda(50, 100, "sigmoid") == pytest.approx(2 / (1 + math.exp(-5)) - 1)


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="guidance.lambda.schedule"):
        guidance_lambda(1, 10, "cosine")


def test_ramp_start_from_unfreeze_takes_the_later_of_warmup_and_unfreeze():
    from metadino.guidance.schedule import lambda_ramp_start

    assert lambda_ramp_start(0, start="step0", unfreeze_step=100) == 0
    assert lambda_ramp_start(30, start="step0", unfreeze_step=100) == 30
    assert lambda_ramp_start(30, start="unfreeze", unfreeze_step=100) == 100
    assert lambda_ramp_start(300, start="unfreeze", unfreeze_step=100) == 300
    assert lambda_ramp_start(0, start="unfreeze", unfreeze_step=0) == 0  # from scratch: no heads-only stage
    with pytest.raises(UserError, match="guidance.lambda.start"):
        lambda_ramp_start(0, start="later", unfreeze_step=0)
