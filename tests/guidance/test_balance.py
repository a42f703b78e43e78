"""Gradient-norm balancing (spec §5) and the FMoW two-guide pipeline parity (`guide/*`, spec §15)."""

from __future__ import annotations

import pytest
import torch

from metadino.guidance import PrototypeBank, balance_guides, guidance_lambda

TOL = {"rtol": 1e-5, "atol": 1e-7}
# FMoW recipe: (name, classes, weight, grl); the reference's GRL weight rule w_eff = w/10 and λ_eff = −λ.
GUIDES = (("sub_region", 18, 0.03, False), ("year", 16, 0.03, True))


def test_fmow_two_guide_pipeline_matches_reference(reference_values):
    ref = reference_values
    lam = guidance_lambda(int(ref["guide/iteration"]), 25000, "sigmoid", 0)
    assert lam == pytest.approx(ref["guide/lambda"].item(), rel=1e-12)
    student = ref["guide/student_cls_pre_head"].clone().requires_grad_()
    weighted, banks, outs = {}, {}, {}
    for name, n_cls, weight, grl in GUIDES:
        bank = PrototypeBank(64, n_cls, temperature=0.02333, momentum=0.999, phi_min=0.01)
        bank.centroids.copy_(ref[f"guide/{name}_init_centroids"])
        lam_eff = -lam if grl else lam
        if grl:
            assert lam_eff == pytest.approx(ref["guide/year_effective_lambda"].item(), rel=1e-12)
        outs[name] = bank.loss(student, ref[f"meta/{name}"], None, lam_eff)
        weighted[name] = (weight / 10 if grl else weight) * outs[name].loss
        banks[name] = bank
    for name, *_ in GUIDES:  # prototype update from the teacher, after all losses, before backward
        banks[name].update(ref["guide/teacher_cls_pre_head"], ref[f"meta/{name}"], None)

    (plain,) = torch.autograd.grad(sum(weighted.values()), student, retain_graph=True)
    total, scales, norms, target = balance_guides(weighted, student)
    (normalized,) = torch.autograd.grad(total, student)

    for name, *_ in GUIDES:
        torch.testing.assert_close(outs[name].loss, ref[f"guide/{name}_loss"], **TOL)
        torch.testing.assert_close(weighted[name], ref[f"guide/{name}_weighted"], **TOL)
        assert outs[name].metrics["accuracy"].item() == pytest.approx(ref[f"guide/{name}_accuracy"].item(), abs=1e-7)
        assert norms[name] == pytest.approx(ref[f"guide/gradnorm_{name}"].item(), rel=1e-5)
        assert scales[name] == pytest.approx(ref[f"guide/scale_{name}"].item(), rel=1e-5)
        torch.testing.assert_close(banks[name].centroids, ref[f"guide/{name}_centroids_after"], **TOL)
        torch.testing.assert_close(banks[name].concentration, ref[f"guide/{name}_concentration_after"], **TOL)
        assert torch.equal(banks[name].counts, ref[f"guide/{name}_counts_after"])
    assert target == pytest.approx(ref["guide/gradnorm_target"].item(), rel=1e-5)
    torch.testing.assert_close(total, ref["guide/contribution"], **TOL)
    torch.testing.assert_close(plain, ref["guide/grad_cls_plain_sum"], **TOL)
    torch.testing.assert_close(normalized, ref["guide/grad_cls_normalized"], **TOL)


def _two_losses(weights=(1.0, 0.01)) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    z = torch.randn(2, 6, 5, requires_grad=True)
    a, b = torch.randn(5), torch.randn(5)
    return {"a": weights[0] * (z @ a).pow(2).mean(), "b": weights[1] * (z @ b).sin().mean()}, z


def test_balanced_gradients_all_have_the_geometric_mean_norm():
    losses, z = _two_losses()
    g = {k: torch.autograd.grad(v, z, retain_graph=True)[0].norm().item() for k, v in losses.items()}
    total, scales, norms, target = balance_guides(losses, z)
    assert norms == pytest.approx(g, rel=1e-6)
    assert target == pytest.approx((g["a"] * g["b"]) ** 0.5, rel=1e-6)
    for k, v in losses.items():
        (gk,) = torch.autograd.grad(scales[k] * v, z, retain_graph=True)
        assert gk.norm().item() == pytest.approx(target, rel=1e-5)  # up to the +1e-8 of s_i
    torch.testing.assert_close(total, scales["a"] * losses["a"] + scales["b"] * losses["b"])
    assert not isinstance(scales["a"], torch.Tensor)  # constants: no graph through the scales


def test_fewer_than_two_valid_guides_give_the_plain_sum():
    losses, z = _two_losses(weights=(1.0, 0.0))  # weight 0: gradient 0, not valid
    losses["c"] = torch.tensor(0.3)  # independent of the anchor: norm 0
    total, scales, norms, _ = balance_guides(losses, z)
    assert scales == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert norms["b"] == 0.0 and norms["c"] == 0.0
    torch.testing.assert_close(total, losses["a"] + losses["b"] + losses["c"])


def test_zero_weight_keeps_scale_one():
    losses, z = _two_losses()
    losses["c"] = 2.0 * losses["a"]
    _, scales, _, _ = balance_guides(losses, z, weights={"a": 1.0, "b": 0.01, "c": 0.0})
    assert scales["c"] == 1.0 and scales["a"] != 1.0


def test_single_process_per_rank_flag_is_a_no_op():
    losses, z = _two_losses()
    _, s0, n0, t0 = balance_guides(losses, z)
    _, s1, n1, t1 = balance_guides(losses, z, per_rank=True)
    assert (s0, n0, t0) == (s1, n1, t1)
