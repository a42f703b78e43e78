"""Prototype bank: parity with the reference values `proto/*`, the update rules, buffers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metadino.guidance.prototypes import PrototypeBank

TAGS = {"m0999": 0.999, "m05": 0.5}
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _bank(ref: dict[str, torch.Tensor], tag: str) -> PrototypeBank:
    bank = PrototypeBank(64, 6, float(ref["proto/base_temperature"]), TAGS[tag], phi_min=0.01)
    bank.centroids.copy_(ref[f"proto/{tag}/init_centroids"])  # the stored draw instead of a fresh one
    bank.concentration.copy_(ref[f"proto/{tag}/init_concentration"])
    return bank


@pytest.mark.parametrize("tag", list(TAGS))
def test_prototype_bank_two_steps_match_reference(reference_values, tag):
    ref = reference_values
    bank = _bank(ref, tag)
    lam = float(ref["proto/lambda"])
    for sfx in ("", "_2"):
        x = ref[f"proto/student_cls{sfx}"].clone().requires_grad_()
        out = bank.loss(x, ref[f"proto/labels{sfx}"], None, lam)
        bank.update(ref[f"proto/teacher_cls{sfx}"], ref[f"proto/labels{sfx}"], None)  # before backward, as in training
        (grad,) = torch.autograd.grad(out.loss, x)
        torch.testing.assert_close(out.loss, ref[f"proto/{tag}/loss{sfx}"], **TOL)
        assert out.metrics["accuracy"].item() == pytest.approx(ref[f"proto/{tag}/accuracy{sfx}"].item(), abs=1e-7)
        torch.testing.assert_close(grad, ref[f"proto/{tag}/grad_student_cls{sfx}_lambda0p7"], **TOL)
        torch.testing.assert_close(bank.centroids, ref[f"proto/{tag}/centroids_after{sfx}"], **TOL)
        torch.testing.assert_close(bank.concentration, ref[f"proto/{tag}/concentration_after{sfx}"], **TOL)
        assert torch.equal(bank.counts, ref[f"proto/{tag}/counts_after{sfx}"])


def test_prototype_reversed_gradient_matches_reference(reference_values):
    ref = reference_values
    bank = _bank(ref, "m0999")
    x = ref["proto/student_cls"].clone().requires_grad_()
    out = bank.loss(x, ref["proto/labels"], None, -float(ref["proto/lambda"]))
    (grad,) = torch.autograd.grad(out.loss, x)
    torch.testing.assert_close(grad, ref["proto/grad_student_cls_lambda_m0p7"], **TOL)
    torch.testing.assert_close(out.loss, ref["proto/m0999/loss"], **TOL)  # λ never changes the value


def test_prototype_loss_formula_per_class_temperature():
    torch.manual_seed(0)
    bank = PrototypeBank(8, 4, temperature=0.1, momentum=0.9, phi_min=0.05)
    bank.centroids.mul_(torch.tensor([1.0, 3.0, 0.5, 2.0])[:, None])  # stored un-normalised
    bank.concentration.copy_(torch.tensor([0.1, 0.2, 0.01, 0.3]))  # 0.01 is clamped to phi_min
    x, y = torch.randn(2, 5, 8), torch.tensor([0, 1, 2, 3, 1])
    logits = F.normalize(x, dim=-1) @ F.normalize(bank.centroids, dim=-1).T / torch.tensor([0.1, 0.2, 0.05, 0.3])
    expected = torch.stack([F.cross_entropy(logits[c], y) for c in range(2)]).mean()
    out = bank.loss(x, y, None, 1.0)
    torch.testing.assert_close(out.loss, expected)
    acc = torch.stack([(logits[c].argmax(-1) == y).float().mean() for c in range(2)]).mean()
    torch.testing.assert_close(out.metrics["accuracy"], acc)


def test_prototype_update_rules_first_ema_and_phi():
    """first-seen class: C = μ; seen class: EMA; φ only where n_c >= 2 and counts > 0 (before the update)."""
    bank = PrototypeBank(4, 3, temperature=0.5, momentum=0.8, phi_min=0.01)
    bank.counts.copy_(torch.tensor([0, 5, 5]))
    c_old, phi_old = bank.centroids.clone(), bank.concentration.clone()
    t = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1.0], [0, 1.0, 1.0, 0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    bank.update(t[None], y, None)
    th = F.normalize(t, dim=-1)
    mu0, mu1 = th[:2].mean(0), th[2:4].mean(0)
    torch.testing.assert_close(bank.centroids[0], mu0)  # first: the mean itself, not re-normalised
    torch.testing.assert_close(bank.centroids[1], 0.8 * c_old[1] + 0.2 * mu1)
    torch.testing.assert_close(bank.centroids[2], 0.8 * c_old[2] + 0.2 * th[4])
    h1 = F.normalize(c_old[1], dim=-1)
    rms = ((th[2:4] - h1).pow(2).sum(-1).mean()).sqrt()
    torch.testing.assert_close(bank.concentration[1], 0.8 * phi_old[1] + 0.2 * rms)
    assert bank.concentration[0] == phi_old[0]  # first sighting: no φ step
    assert bank.concentration[2] == phi_old[2]  # a single sample: no φ step
    assert bank.counts.tolist() == [2, 7, 6]


def test_prototype_reset_buffers_with_generator():
    bank = PrototypeBank(16, 5, temperature=0.07, momentum=0.99, phi_min=0.01)
    bank.counts.fill_(3)
    bank.concentration.fill_(1.0)
    bank.reset_buffers(torch.Generator().manual_seed(7))
    first = bank.centroids.clone()
    expected = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(7)), dim=-1)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    assert torch.all(bank.concentration == torch.tensor(0.07)) and bank.counts.sum() == 0
    assert set(bank.state_dict()) == {"centroids", "concentration", "counts"}  # checkpointed, no parameters
    assert not list(bank.parameters())


def test_prototype_update_after_loss_then_backward_is_safe():
    """The training step updates the bank between the loss and backward: no in-place autograd error."""
    bank = PrototypeBank(8, 3, 0.1, 0.5, 0.01)
    x = torch.randn(2, 4, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    out = bank.loss(x, y, None, 1.0)
    (g1,) = torch.autograd.grad(out.loss, x, retain_graph=True)
    bank.update(torch.randn(2, 4, 8), y, None)
    out.loss.backward()
    torch.testing.assert_close(x.grad, g1)
