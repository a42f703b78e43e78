from __future__ import annotations

import torch

from metadino.data.batch import Target
from metadino.data.targets import ColumnEncoder
from metadino.guidance.guides import GuideSet, GuideSpec
from metadino.guidance.mlp import MLPClassifier


def _batch(B=6):
    g = torch.Generator().manual_seed(0)
    return {
        "plate": Target(torch.randint(0, 3, (B,), generator=g), torch.ones(B, dtype=torch.bool)),
        "cell_line": Target(torch.tensor([0, 1, 0, 1, 0, 1][:B]), torch.tensor([True, True, False, True, True, True][:B])),
    }


def _set(role: str, given=()):
    torch.manual_seed(0)
    cond = {"cell_line": ColumnEncoder("cell_line", "categorical", classes=["a", "b"])}
    in_dim = 8 + (2 if given else 0)
    head = MLPClassifier(in_dim, 3, [16], 0.0)
    return GuideSet([GuideSpec("plate", role, 0.5, given=tuple(given))], {"plate": head}, cond if given else {}, balance=False)


def test_spurious_guide_reverses_the_backbone_gradient_only():
    cls = torch.randn(2, 6, 8)
    grads = {}
    for role in ("informative", "spurious"):
        gs = _set(role)
        x = cls.clone().requires_grad_(True)
        total, contrib, metrics = gs(x, None, _batch(), lam=0.7)
        total.backward()
        grads[role] = (x.grad.clone(), [p.grad.clone() for p in gs.parameters()])
        assert metrics["guide/plate/lambda"] == (0.7 if role == "informative" else -0.7)
        torch.testing.assert_close(total, 0.5 * torch.tensor(metrics["guide/plate/loss"]))
    torch.testing.assert_close(grads["spurious"][0], -grads["informative"][0])
    for a, b in zip(grads["spurious"][1], grads["informative"][1]):
        torch.testing.assert_close(a, b)  # the adversary's own parameters are not reversed


def test_given_columns_are_appended_as_one_hot_without_gradient():
    gs = _set("spurious", given=["cell_line"])
    cls = torch.randn(2, 6, 8, requires_grad=True)
    feats = gs._features(gs.specs["plate"], cls, None, _batch())
    assert feats.shape == (2, 6, 10)
    torch.testing.assert_close(feats[:, :, 8:][0], torch.tensor([[1, 0], [0, 1], [0, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float))
    total, _, _ = gs(cls, None, _batch(), lam=1.0)
    total.backward()
    assert cls.grad is not None and torch.isfinite(cls.grad).all()
