"""Gram anchoring loss (DINOv3 §4): value, invariances, gradient, clipping, precision."""

from __future__ import annotations

import math

import pytest
import torch

from metadino.losses import GramLoss


def test_value_matches_a_hand_computation():
    # One image, two patches in 2-D. Student rows (3, 4) and (0, 2) -> unit (0.6, 0.8), (0, 1): cosine 0.8.
    # Teacher rows orthogonal: cosine 0. Gram matrices [[1, .8], [.8, 1]] vs [[1, 0], [0, 1]]:
    # squared differences 0, .64, .64, 0 -> mean 0.32.
    student = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])
    teacher = torch.tensor([[[5.0, 0.0], [0.0, -1.0]]])
    assert GramLoss()(student, teacher).item() == pytest.approx(0.32, abs=1e-7)
    # A second image with identical Gram matrices halves the mean (per-image mean, then over images).
    student2 = torch.cat([student, teacher])
    teacher2 = torch.cat([teacher, teacher])
    assert GramLoss()(student2, teacher2).item() == pytest.approx(0.16, abs=1e-7)


def test_value_matches_the_frobenius_formula_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 11, generator=g)  # widths may differ
    xs = s / s.norm(dim=-1, keepdim=True)
    xt = t / t.norm(dim=-1, keepdim=True)
    per_image = [torch.linalg.matrix_norm(xs[b] @ xs[b].T - xt[b] @ xt[b].T) ** 2 / 5**2 for b in range(3)]
    torch.testing.assert_close(GramLoss()(s, t), torch.stack(per_image).mean(), rtol=1e-6, atol=1e-7)


def test_zero_when_student_equals_teacher_and_invariant_to_feature_scale_and_rotation():
    x = torch.randn(4, 6, 8)
    assert GramLoss()(x, x).item() == 0.0
    q, _ = torch.linalg.qr(torch.randn(8, 8))  # Gram matrices only see angles between patches of an image
    assert GramLoss()(3.0 * x @ q, x).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_reaches_the_student_only():
    s = torch.randn(2, 5, 8, requires_grad=True)
    t = torch.randn(2, 5, 8, requires_grad=True)
    GramLoss()(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    assert t.grad is None


def test_clip_negatives_follows_dinov3_remove_neg_options():
    # cos(student) = -0.6, cos(teacher) = -0.8 (both negative); then a pair with a positive teacher similarity.
    s = torch.tensor([[[1.0, 0.0], [-0.6, 0.8]]])
    t = torch.tensor([[[1.0, 0.0], [-0.8, 0.6]]])
    assert GramLoss("none")(s, t).item() == pytest.approx(2 * 0.2**2 / 4)
    assert GramLoss("both")(s, t).item() == 0.0
    assert GramLoss("teacher")(s, t).item() == 0.0  # both negative: the student entry is not penalised
    # teacher negative, student positive: "teacher" penalises the student towards 0, "both" too
    s_pos = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    assert GramLoss("teacher")(s_pos, t).item() == pytest.approx(2 * 0.6**2 / 4)
    assert GramLoss("both")(s_pos, t).item() == pytest.approx(2 * 0.6**2 / 4)
    with pytest.raises(ValueError, match="clip_negatives"):
        GramLoss("negatives")


def test_fp32_under_bf16_autocast_and_empty_batch():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 9, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = GramLoss()(s, t)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, GramLoss()(s, t), rtol=0, atol=0)  # no bf16 matmul inside
    empty = torch.zeros(0, 9, 16, requires_grad=True)
    zero = GramLoss()(empty, torch.zeros(0, 9, 16))
    assert zero.item() == 0.0 and zero.requires_grad and not math.isnan(zero.item())
    with pytest.raises(ValueError, match="same B and N"):
        GramLoss()(s, t[:, :4])
