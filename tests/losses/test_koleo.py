"""KoLeo: parity with the reference values (spec §7, §15) and numerical safety."""

from __future__ import annotations

import math

import torch

from metadino.losses.koleo import KoLeoLoss


def test_koleo_parity(reference_values):
    rv = reference_values
    torch.testing.assert_close(KoLeoLoss()(rv["koleo/x"]), rv["koleo/loss"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(KoLeoLoss()(rv["koleo/x_dup"]), rv["koleo/loss_dup"], atol=1e-6, rtol=1e-5)


def test_koleo_duplicate_rows_finite_loss_and_grad(reference_values):
    x = reference_values["koleo/x_dup"].clone().requires_grad_()
    loss = KoLeoLoss()(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_koleo_bf16_input_is_finite_and_close_to_fp32(reference_values):
    for key in ("koleo/x", "koleo/x_dup"):
        x = reference_values[key]
        loss = KoLeoLoss()(x.bfloat16())
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        # Only the bf16 rounding of the input differs (the duplicate pair stays at distance eps·sqrt(D)).
        torch.testing.assert_close(loss, KoLeoLoss()(x.bfloat16().float()), atol=0, rtol=0)
        assert abs(loss.item() - KoLeoLoss()(x).item()) < 2e-2


def test_koleo_single_row_is_zero():
    x = torch.randn(1, 8, requires_grad=True)
    loss = KoLeoLoss()(x)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(1, 8))


def test_koleo_two_orthogonal_rows():
    # Unit vectors at distance sqrt(2): L = -log(‖e0 - e1 + eps‖ + eps) ≈ -log(sqrt 2).
    loss = KoLeoLoss()(torch.eye(2, 4) * 3.0)
    assert math.isclose(loss.item(), -math.log(math.sqrt(2)), abs_tol=1e-6)
