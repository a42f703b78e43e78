"""Sinkhorn-Knopp and softmax centering: parity with the reference values (spec §7, §15) and edge cases."""

from __future__ import annotations

import pytest
import torch

from metadino.losses.centering import SoftmaxCenter, sinkhorn_knopp

PROB_TOL = {"atol": 1e-6, "rtol": 0.0}


def test_sinkhorn_dino_parity(reference_values):
    rv = reference_values
    probs = sinkhorn_knopp(rv["dino/teacher_logits"], float(rv["dino/teacher_temp"]))
    torch.testing.assert_close(probs, rv["dino/teacher_probs_sk"], **PROB_TOL)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(32), atol=1e-5, rtol=0)


def test_sinkhorn_ibot_parity(reference_values):
    rv = reference_values
    probs = sinkhorn_knopp(rv["ibot/teacher_masked_logits"], 0.07)
    torch.testing.assert_close(probs, rv["ibot/teacher_probs_sk"], **PROB_TOL)


def test_sinkhorn_is_invariant_to_a_per_prototype_shift(reference_values):
    # The internal per-prototype max shift must be exact: adding a constant per prototype changes nothing.
    logits = reference_values["dino/teacher_logits"]
    shifted = logits + torch.linspace(-30.0, 30.0, logits.shape[1])
    torch.testing.assert_close(sinkhorn_knopp(shifted, 0.07), reference_values["dino/teacher_probs_sk"],
                               **PROB_TOL)


def test_sinkhorn_empty_and_extreme():
    assert sinkhorn_knopp(torch.zeros(0, 8), 0.07).shape == (0, 8)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randint(0, 2, (16, 64), generator=gen).float() * 2 - 1) * 1e4
    probs = sinkhorn_knopp(logits, 0.07)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(16), atol=1e-5, rtol=0)
    # bf16 logits are computed in fp32.
    assert sinkhorn_knopp(logits.bfloat16(), 0.07).dtype == torch.float32


def test_softmax_center_parity(reference_values):
    rv = reference_values
    center = SoftmaxCenter(512)
    assert center.momentum == 0.9
    torch.testing.assert_close(center.probs(rv["dino/teacher_logits"], 0.07), rv["dino/softmax_center0_probs"],
                               **PROB_TOL)
    center.update(rv["dino/teacher_logits"])
    torch.testing.assert_close(center.center, rv["dino/center_after_update"], atol=1e-7, rtol=1e-6)
    # Synchronous update: the new center is used on the very next call.
    torch.testing.assert_close(center.probs(rv["dino/teacher_logits_2"], 0.07), rv["dino/softmax_center1_probs"],
                               **PROB_TOL)
    assert "center" in center.state_dict()


def test_softmax_center_empty_update_is_noop():
    center = SoftmaxCenter(4)
    center.update(torch.ones(3, 4))
    before = center.center.clone()
    center.update(torch.zeros(0, 4))
    assert torch.equal(center.center, before)
    torch.testing.assert_close(before, torch.full((1, 4), 0.1))


@pytest.mark.parametrize("temp", [0.3, 1.0])
def test_sinkhorn_rows_sum_to_one_and_prototypes_balanced(temp):
    gen = torch.Generator().manual_seed(1)
    probs = sinkhorn_knopp(torch.randn(64, 16, generator=gen), temp, n_iterations=50)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)
    # With many iterations every prototype gets the same mass n/K.
    torch.testing.assert_close(probs.sum(dim=0), torch.full((16,), 4.0), atol=1e-3, rtol=0)


def _sinkhorn_out_of_place_start(logits, teacher_temp, n_iterations=3):
    # The single-process formula before the exponentials were taken in place (bit-for-bit reference).
    col_max = logits.amax(dim=0)
    col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max))
    q = torch.exp((logits - col_max) / teacher_temp).t()
    n, k = logits.shape
    tiny = torch.finfo(q.dtype).tiny
    q /= q.sum().clamp_min(tiny)
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True).clamp_min(tiny)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= n
    q *= n
    return q.t()


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_sinkhorn_in_place_exponentials_change_no_bit(reference_values, scale):
    logits = reference_values["ibot/teacher_masked_logits"]
    gen = torch.Generator().manual_seed(0)
    for x in (logits, torch.randn(40, 3000, generator=gen) * scale):
        before = x.clone()
        assert torch.equal(sinkhorn_knopp(x, 0.07), _sinkhorn_out_of_place_start(x, 0.07))
        assert torch.equal(x, before)  # the caller's logits are left alone
        # under bf16 autocast too: fp32 inside
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(sinkhorn_knopp(x.bfloat16(), 0.07), _sinkhorn_out_of_place_start(x.bfloat16().float(), 0.07))
