"""DINO loss: parity with the reference values (spec §7, §15) and numerical safety."""

from __future__ import annotations

import pytest
import torch

from metadino.losses.centering import sinkhorn_knopp
from metadino.losses.dino import DINOLoss

LOSS_TOL = {"atol": 1e-5, "rtol": 1e-5}


def _inputs(rv):
    teacher = rv["dino/teacher_probs_sk"].view(2, 16, 512)  # rows are crop*B + b
    return rv["dino/student_global_logits"], rv["dino/student_local_logits"], teacher


def test_dino_parity(reference_values):
    rv = reference_values
    out = DINOLoss()(*_inputs(rv))
    torch.testing.assert_close(out["dino_local"], rv["dino/loss_local"], **LOSS_TOL)
    torch.testing.assert_close(out["dino_global"], rv["dino/loss_global_ignore_diag"], **LOSS_TOL)
    torch.testing.assert_close(out["dino"], rv["dino/weighted_total"], **LOSS_TOL)
    torch.testing.assert_close(out["dino"], 16 / 18 * out["dino_local"] + 2 / 18 * out["dino_global"])


def test_dino_global_with_diagonal_parity(reference_values):
    out = DINOLoss(ignore_diagonal=False)(*_inputs(reference_values))
    torch.testing.assert_close(out["dino_global"], reference_values["dino/loss_global_with_diag"], **LOSS_TOL)
    torch.testing.assert_close(out["dino"], 16 / 20 * out["dino_local"] + 4 / 20 * out["dino_global"])


def test_dino_end_to_end_from_teacher_logits(reference_values):
    rv = reference_values
    probs = sinkhorn_knopp(rv["dino/teacher_logits"], float(rv["dino/teacher_temp"])).view(2, 16, 512)
    out = DINOLoss()(rv["dino/student_global_logits"], rv["dino/student_local_logits"], probs)
    torch.testing.assert_close(out["dino"], rv["dino/weighted_total"], **LOSS_TOL)


@pytest.mark.parametrize("local", [None, "empty"])
def test_dino_without_local_crops(reference_values, local):
    g, _, t = _inputs(reference_values)
    student_local = None if local is None else torch.zeros(0, 16, 512)
    out = DINOLoss()(g, student_local, t)
    assert out["dino_local"].item() == 0.0
    torch.testing.assert_close(out["dino"], reference_values["dino/loss_global_ignore_diag"], **LOSS_TOL)


def test_dino_no_pairs_raises():
    with pytest.raises(ValueError, match="crop pair"):
        DINOLoss()(torch.zeros(1, 2, 4), None, torch.full((1, 2, 4), 0.25))


def test_dino_finite_for_extreme_logits():
    gen = torch.Generator().manual_seed(0)
    sign = lambda *s: torch.randint(0, 2, s, generator=gen).float() * 2 - 1  # noqa: E731
    teacher = sinkhorn_knopp(sign(4, 32) * 1e4, 0.07).view(2, 2, 32)
    student_g = (sign(2, 2, 32) * 1e4).requires_grad_()
    student_l = (sign(3, 2, 32) * 1e4).bfloat16().requires_grad_()
    out = DINOLoss()(student_g, student_l, teacher)
    assert all(torch.isfinite(v) for v in out.values())
    out["dino"].backward()
    assert torch.isfinite(student_g.grad).all() and torch.isfinite(student_l.grad.float()).all()


def test_dino_and_sinkhorn_are_fp32_under_bf16_autocast():
    # Autocast lowers einsum/matmul to bf16 even for fp32 inputs; the loss must not be quantised (a DINO term of
    # ln 4096 = 8.318 used to be logged as 8.312).
    gen = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(2 * 8, 4096, generator=gen) * 0.05
    student_g, student_l = torch.randn(2, 8, 4096, generator=gen) * 0.05, torch.randn(3, 8, 4096, generator=gen) * 0.05
    expected = DINOLoss()(student_g, student_l, sinkhorn_knopp(teacher_logits, 0.07).view(2, 8, 4096))["dino"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = sinkhorn_knopp(teacher_logits, 0.07).view(2, 8, 4096)
        got = DINOLoss()(student_g, student_l, probs)["dino"]
    assert probs.dtype == torch.float32 and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
