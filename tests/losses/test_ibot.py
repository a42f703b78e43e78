"""iBOT patch loss: parity with the reference values (spec §7, §15), mask bookkeeping, edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metadino.losses import ibot
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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, k, chunk", [(37, 4096, 1 << 22), (67, 2048, 2048), (5, 3000, 9000), (1, 64, 1),
                                            (9, 100, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_soft_cross_entropy_rows_is_the_plain_expression_bit_for_bit(monkeypatch, threads, rows, k, chunk, dtype):
    # Blocks of rows (several, one, a remainder merged), fp32 or bf16 logits: loss and gradient bit for bit those of
    # autograd on the expression the loss used to evaluate (one thread or two: the sums split differently).
    monkeypatch.setattr(ibot, "CHUNK_ELEMENTS", chunk)
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, k, generator=gen) * 4).to(dtype).requires_grad_()
    probs = torch.softmax(torch.randn(rows, k, generator=gen) * 5, dim=-1)
    weight = torch.rand(rows, generator=gen)
    fast = ibot.soft_cross_entropy_rows(logits, probs, 0.1)
    (fast * weight).sum().backward()
    fast_grad, logits.grad = logits.grad, None
    plain = (probs * F.log_softmax(logits.float() / 0.1, dim=-1)).sum(dim=-1)
    (plain * weight).sum().backward()
    assert torch.equal(fast, plain)
    assert fast_grad is not None and fast_grad.dtype == dtype and torch.equal(fast_grad, logits.grad)


def test_soft_cross_entropy_rows_gives_probs_their_gradient_when_asked():
    logits = torch.randn(4, 10, requires_grad=True)
    probs = torch.softmax(torch.randn(4, 10), dim=-1).requires_grad_()
    ibot.soft_cross_entropy_rows(logits, probs, 0.1).sum().backward()
    expected = F.log_softmax(logits.detach() / 0.1, dim=-1)
    assert probs.grad is not None and torch.equal(probs.grad, expected)


def test_ibot_loss_of_bf16_logits_is_that_of_their_fp32_copy():
    rows, k = 12, 256
    gen = torch.Generator().manual_seed(1)
    student = (torch.randn(rows, k, generator=gen) * 3).bfloat16().requires_grad_()
    teacher = sinkhorn_knopp(torch.randn(rows, k, generator=gen), 0.07)
    weight = torch.full((rows,), 1 / 6)
    loss = IBOTPatchLoss()(student, teacher, weight, n_images=4)
    loss.backward()
    grad, student.grad = student.grad, None
    reference = IBOTPatchLoss()(student.float(), teacher, weight, n_images=4)
    reference.backward()
    assert torch.equal(loss, reference) and grad is not None and torch.equal(grad, student.grad)


def test_soft_cross_entropy_rows_of_no_rows():
    logits = torch.zeros(0, 8, requires_grad=True)
    per_row = ibot.soft_cross_entropy_rows(logits, torch.zeros(0, 8), 0.1)
    per_row.sum().backward()
    assert per_row.shape == (0,) and logits.grad is not None and logits.grad.shape == (0, 8)
