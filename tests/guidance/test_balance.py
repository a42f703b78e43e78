"""Gradient-norm balancing (spec §5) and the FMoW two-guide pipeline parity (`guide/*`, spec §15)."""

from __future__ import annotations

import pytest
import torch

from metadino.data.batch import Target
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


# ---------------------------------------------------------------------------------------------- EMA balancing


def test_ema_math_first_valid_norm_starts_each_average_and_invalid_norms_leave_it():
    from metadino.guidance.balance import ema_grad_norms

    prev = torch.tensor([0.0, 2.0, 2.0, 0.0])
    norms = torch.tensor([3.0, 4.0, 0.0, 1e-7])  # new guide, running guide, guide without gradient, tiny norm
    out = ema_grad_norms(prev, norms, 0.99)
    torch.testing.assert_close(out, torch.tensor([3.0, 0.99 * 2.0 + 0.01 * 4.0, 2.0, 0.0]))
    # Three steps by hand from a first norm of 1: a = 1, then 0.9 a + 0.1 g.
    a = torch.zeros(1)
    for g in (1.0, 3.0, 0.5):
        a = ema_grad_norms(a, torch.tensor([g]), 0.9)
    assert a.item() == pytest.approx(0.9 * (0.9 * 1.0 + 0.1 * 3.0) + 0.1 * 0.5, rel=1e-6)


def test_ema_balancing_uses_the_averaged_norms_and_stores_them_only_on_commit():
    from metadino.guidance.balance import GradNormEMA

    ema = GradNormEMA(2, momentum=0.99)
    losses, z = _two_losses()
    _, plain_scales, g1, _ = balance_guides(losses, z)
    # First step: the averages start at this step's norms (not at 0), so the scales equal per-step balancing.
    _, s1, n1, t1 = balance_guides(losses, z, norm_ema=ema)
    assert n1 == g1 and s1 == pytest.approx(plain_scales, rel=1e-6)
    assert torch.equal(ema.norms, torch.zeros(2))  # not stored before commit
    ema.commit()
    torch.testing.assert_close(ema.norms, torch.tensor([g1["a"], g1["b"]]))
    # Second step with the "b" loss 10x larger: per-step balancing would scale b by G/g_b with g_b 10x; the EMA
    # has moved only 1 % of the way, so b's scale barely changes and its gradient at z is ~10x the target.
    losses2 = {"a": losses["a"], "b": 10.0 * losses["b"]}
    total, s2, n2, t2 = balance_guides(losses2, z, norm_ema=ema)
    avg = {"a": g1["a"], "b": 0.99 * g1["b"] + 0.01 * n2["b"]}
    assert n2["b"] == pytest.approx(10 * g1["b"], rel=1e-5)
    assert t2 == pytest.approx((avg["a"] * avg["b"]) ** 0.5, rel=1e-5)
    assert s2 == pytest.approx({k: t2 / avg[k] for k in avg}, rel=1e-5)
    torch.testing.assert_close(total, s2["a"] * losses2["a"] + s2["b"] * losses2["b"])
    ema.discard()  # a thrown-away step (non-finite loss): the state stays that of the last committed step
    ema.commit()
    torch.testing.assert_close(ema.norms, torch.tensor([g1["a"], g1["b"]]))


def test_ema_balancing_before_any_gradient_keeps_plain_sum_and_no_state():
    from metadino.guidance.balance import GradNormEMA

    ema = GradNormEMA(2, momentum=0.99)
    losses, z = _two_losses(weights=(0.0, 0.0))  # like λ = 0 at step 0: every norm is 0
    _, scales, _, _ = balance_guides(losses, z, norm_ema=ema)
    ema.commit()
    assert scales == {"a": 1.0, "b": 1.0} and torch.equal(ema.norms, torch.zeros(2))
    with pytest.raises(ValueError, match="momentum"):
        GradNormEMA(2, momentum=1.0)


def test_guide_set_commits_the_ema_only_in_update_and_saves_it_in_state_dict():
    from metadino.guidance.guides import GuideSet, GuideSpec
    from metadino.guidance.mlp import MLPClassifier

    torch.manual_seed(0)
    specs = [GuideSpec("a", "informative", 0.1), GuideSpec("b", "spurious", 0.01)]
    heads = {"a": MLPClassifier(8, 3, [8], 0.0), "b": MLPClassifier(8, 2, [8], 0.0)}
    guides = GuideSet(specs, heads, {}, balance=True, balance_momentum=0.99)
    assert "balance_ema.norms" in guides.state_dict()
    assert "balance_ema.norms" not in GuideSet(specs, heads, {}, balance=True).state_dict()
    cls = torch.randn(2, 6, 8, requires_grad=True)
    batch = {"a": Target(torch.arange(6) % 3, torch.ones(6, dtype=torch.bool)),
             "b": Target(torch.arange(6) % 2, torch.ones(6, dtype=torch.bool))}
    _, _, metrics = guides(cls, None, batch, 0.5)
    assert torch.equal(guides.balance_ema.norms, torch.zeros(2))  # forward alone (e.g. a non-finite step)
    guides(cls, None, batch, 0.5)
    guides.update(cls.detach(), batch)
    expected = torch.tensor([metrics["guide/a/grad_norm"], metrics["guide/b/grad_norm"]])
    torch.testing.assert_close(guides.balance_ema.norms, expected)  # initialised from the first committed norms
    assert float(metrics["guide/a/grad_norm_ema"]) == pytest.approx(metrics["guide/a/grad_norm"])
    with pytest.raises(ValueError, match="balance_momentum"):
        GuideSet(specs, heads, {}, balance=True, balance_per_rank=True, balance_momentum=0.99)


def test_spurious_weight_divisor_only_moves_the_common_target_under_balancing():
    # The /10 rule divides the spurious ℓ_i by 10: its scale absorbs it (relative weights are lost, spec §0.3), but
    # the geometric-mean target G — the gradient norm every guide gets — falls by 10^(1/n) for n valid guides.
    losses, z = _two_losses()
    _, s, _, t = balance_guides(losses, z)
    _, s_div, _, t_div = balance_guides({"a": losses["a"], "b": losses["b"] / 10}, z)
    assert t_div == pytest.approx(t / 10**0.5, rel=1e-5)
    assert s_div["b"] / 10 == pytest.approx(s["b"] / 10**0.5, rel=1e-4)  # b's gradient at z: G/10^0.5 (+1e-8 of s_i)
