"""iBOT patch loss: parity with the reference values (spec §7, §15), mask bookkeeping, edge cases."""

from __future__ import annotations

import torch

from metadino.losses.centering import sinkhorn_knopp
from metadino.losses.ibot import IBOTPatchLoss


def test_ibot_mask_bookkeeping_matches_reference(reference_values):
    # How the collate derives indices and weights from the [n_images, n_tokens] masks (the loss relies on it).
    rv = reference_values
    masks = rv["ibot/collated_masks"]
    indices = masks.flatten().nonzero().flatten()
    assert torch.equal(indices, rv["ibot/mask_indices_list"])
    per_image = (1.0 / masks.sum(dim=-1).clamp(min=1.0))[:, None].expand_as(masks)[masks]
    torch.testing.assert_close(per_image, rv["ibot/masks_weight"], atol=0, rtol=0)
    assert int(rv["ibot/n_masked_patches"]) == indices.numel() == 21


def test_ibot_parity(reference_values):
    rv = reference_values
    n_images = rv["ibot/collated_masks"].shape[0]  # 2 crops x 4 images, incl. the 4 without masks
    loss = IBOTPatchLoss()(rv["ibot/student_masked_logits"], rv["ibot/teacher_probs_sk"], rv["ibot/masks_weight"],
                           n_images)
    torch.testing.assert_close(loss, rv["ibot/loss"], atol=1e-5, rtol=1e-5)
    # End to end from the teacher logits (eager SK with B = number of masked patches).
    probs = sinkhorn_knopp(rv["ibot/teacher_masked_logits"], 0.07)
    loss2 = IBOTPatchLoss()(rv["ibot/student_masked_logits"], probs, rv["ibot/masks_weight"], n_images)
    torch.testing.assert_close(loss2, rv["ibot/loss"], atol=1e-5, rtol=1e-5)


def test_ibot_no_masked_tokens_is_zero_with_grad():
    student = torch.zeros(0, 8, requires_grad=True)
    loss = IBOTPatchLoss()(student, torch.zeros(0, 8), torch.zeros(0), n_images=4)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert student.grad is not None and student.grad.shape == (0, 8)


def test_ibot_finite_for_extreme_logits():
    gen = torch.Generator().manual_seed(0)
    sign = lambda *s: torch.randint(0, 2, s, generator=gen).float() * 2 - 1  # noqa: E731
    teacher = sinkhorn_knopp(sign(6, 32) * 1e4, 0.07)
    student = (sign(6, 32) * 1e4).requires_grad_()
    loss = IBOTPatchLoss()(student, teacher, torch.full((6,), 1 / 3), n_images=4)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(student.grad).all()
