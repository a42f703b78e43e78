"""MLP guide heads: layout and init, gradient scaling, classification / multilabel / regression losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metadino.guidance.mlp import MLPClassifier, MLPRegressor


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
