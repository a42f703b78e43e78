"""Guide heads (spec §3): prototype-bank parity with `proto/*`, MLP heads, missing-value masking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metadino.errors import UserError
from metadino.guidance.heads import MLPClassifier, MLPRegressor, PrototypeBank

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


def test_mlp_layout_and_init():
    torch.manual_seed(0)
    head = MLPClassifier(32, 7, hidden_dims=[64, 48], dropout=0.0, multilabel=False)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU, nn.Identity, nn.Linear, nn.GELU, nn.Identity, nn.Linear]
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [64, 48, 7]
    for m in head.mlp:
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0) and m.weight.abs().max() <= 2.0
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.15)
    reg = MLPRegressor(32, 2, hidden_dims=[16], dropout=0.3, output_activation="sigmoid", target_min=None,
                       target_max=None)
    assert [type(m) for m in reg.mlp] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert isinstance(MLPClassifier(8, 3, [], 0.0, False).mlp[0], nn.Linear)  # no hidden layer: linear probe


def test_mlp_grl_scales_backbone_gradient_not_head_gradient():
    torch.manual_seed(1)
    head = MLPClassifier(6, 4, [8], 0.0, multilabel=False)
    x0, y = torch.randn(2, 5, 6), torch.tensor([0, 1, 2, 3, 0])
    grads = {}
    for lam in (1.0, -0.3):
        head.zero_grad()
        x = x0.clone().requires_grad_()
        head.loss(x, y, None, lam).loss.backward()
        grads[lam] = (x.grad.clone(), [p.grad.clone() for p in head.parameters()])
    torch.testing.assert_close(grads[-0.3][0], -0.3 * grads[1.0][0])
    for a, b in zip(grads[1.0][1], grads[-0.3][1]):
        torch.testing.assert_close(a, b)


def test_classification_loss_and_accuracy():
    torch.manual_seed(2)
    head = MLPClassifier(6, 4, [8], 0.0, multilabel=False)
    x, y = torch.randn(2, 5, 6), torch.tensor([0, 1, 2, 3, 0])
    out = head.loss(x, y, None, 1.0)
    logits = head(x)
    torch.testing.assert_close(out.loss, (F.cross_entropy(logits[0], y) + F.cross_entropy(logits[1], y)) / 2)
    torch.testing.assert_close(out.metrics["accuracy"], (logits[0].argmax(-1) == y).float().mean())


def test_multilabel_loss_and_exact_match():
    torch.manual_seed(3)
    head = MLPClassifier(6, 3, [8], 0.0, multilabel=True)
    x = torch.randn(2, 4, 6)
    y = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])  # long one-hot, as the HPA collate makes
    out = head.loss(x, y, None, 1.0)
    logits = head(x)
    expected = sum(F.binary_cross_entropy_with_logits(logits[c], y.float()) for c in range(2)) / 2
    torch.testing.assert_close(out.loss, expected)
    match = ((torch.sigmoid(logits[0]) > 0.5) == (y > 0.5)).all(-1).float().mean()
    torch.testing.assert_close(out.metrics["accuracy"], match)


@pytest.mark.parametrize("activation", ["none", "sigmoid", "tanh"])
def test_regression_normalised_targets(activation):
    torch.manual_seed(4)
    head = MLPRegressor(6, 1, [8], 0.0, output_activation=activation, target_min=10.0, target_max=50.0)
    x, y = torch.randn(2, 5, 6), torch.tensor([10.0, 20.0, 30.0, 45.0, 50.0])
    out = head.loss(x, y, None, 1.0)
    pred = head(x)
    assert pred.shape == (2, 5, 1)
    if activation != "none":
        assert pred.abs().max() < 1
    yn = ((y - 10.0) / (40.0 + 1e-8))[:, None]
    torch.testing.assert_close(out.loss, (F.mse_loss(pred[0], yn) + F.mse_loss(pred[1], yn)) / 2)
    torch.testing.assert_close(out.metrics["mse"], F.mse_loss(pred[0], yn))


def _heads() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(5)
    labels = torch.tensor([2, 0, 1, 2, 1, 0, 3])
    return {
        "classification": (MLPClassifier(8, 4, [12], 0.0, False), labels),
        "multilabel": (MLPClassifier(8, 4, [12], 0.0, True), F.one_hot(labels, 4)),
        "regression": (MLPRegressor(8, 2, [12], 0.0, "none", 0.0, 4.0), torch.stack([labels, 3 - labels], 1) * 1.0),
        "prototypical": (PrototypeBank(8, 4, 0.1, 0.9, 0.01), labels),
    }


def _poison(targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """What a missing value looks like: −1 for ids/multi-hot, NaN for regression."""
    fill = float("nan") if targets.is_floating_point() else -1
    mask = ~valid if targets.dim() == 1 else (~valid)[:, None].expand_as(targets)
    return targets.masked_fill(mask, fill)


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression", "prototypical"])
def test_invalid_samples_are_excluded(kind):
    head, targets = _heads()[kind]
    torch.manual_seed(6)
    x, t = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    valid = torch.tensor([True, False, True, True, False, True, True])
    bank_before = {k: v.clone() for k, v in head.state_dict().items()}

    xs = x[:, valid].clone().requires_grad_()
    ref = head.loss(xs, targets[valid], None, 0.5)
    (g_ref,) = torch.autograd.grad(ref.loss, xs)
    head.update(t[:, valid], targets[valid], None)
    state_ref = {k: v.clone() for k, v in head.state_dict().items()}

    head.load_state_dict(bank_before)
    xf = x.clone().requires_grad_()
    got = head.loss(xf, _poison(targets, valid), valid, 0.5)
    (g_got,) = torch.autograd.grad(got.loss, xf)
    head.update(t, _poison(targets, valid), valid)

    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-6, atol=1e-7)
    for k in ref.metrics:
        if k != "valid_fraction":
            torch.testing.assert_close(got.metrics[k], ref.metrics[k], rtol=1e-6, atol=1e-7)
    assert got.metrics["valid_fraction"].item() == pytest.approx(5 / 7)
    torch.testing.assert_close(g_got[:, valid], g_ref, rtol=1e-6, atol=1e-8)
    assert torch.all(g_got[:, ~valid] == 0)
    for k, v in head.state_dict().items():
        torch.testing.assert_close(v, state_ref[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression", "prototypical"])
def test_all_invalid_batch_gives_zero_loss_and_no_update(kind):
    head, targets = _heads()[kind]
    x = torch.randn(2, 7, 8, requires_grad=True)
    valid = torch.zeros(7, dtype=torch.bool)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    out = head.loss(x, _poison(targets, valid), valid, -1.0)
    assert out.loss.requires_grad and out.loss.item() == 0.0
    out.loss.backward()
    assert torch.all(x.grad == 0)
    for p in head.parameters():
        assert p.grad is not None and torch.all(p.grad == 0)  # still in the graph: DDP sees every parameter
    assert all(torch.isfinite(v).all() for v in out.metrics.values())
    head.update(torch.randn(2, 7, 8), _poison(targets, valid), valid)
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), k


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


def test_head_argument_errors():
    with pytest.raises(UserError, match="dropout"):
        MLPClassifier(8, 3, [4], 1.5, False)
    with pytest.raises(UserError, match="output_activation"):
        MLPRegressor(8, 1, [4], 0.0, "relu", None, None)
    with pytest.raises(UserError, match="both target_min and target_max"):
        MLPRegressor(8, 1, [4], 0.0, "none", 0.0, None)
    with pytest.raises(UserError, match="greater than target_min"):
        MLPRegressor(8, 1, [4], 0.0, "none", 2.0, 1.0)
    with pytest.raises(UserError, match="temperature"):
        PrototypeBank(8, 3, 0.0, 0.9, 0.01)
    with pytest.raises(UserError, match="momentum"):
        PrototypeBank(8, 3, 0.1, 1.5, 0.01)
    with pytest.raises(ValueError, match=r"\[n_crops, B, 8\]"):
        PrototypeBank(8, 3, 0.1, 0.9, 0.01).loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), None, 1.0)
