"""The guide-head contract, for every head: missing-value masking, all-invalid batches, argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metadino.errors import UserError
from metadino.guidance.mlp import MLPClassifier, MLPRegressor
from metadino.guidance.prototypes import PrototypeBank


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
