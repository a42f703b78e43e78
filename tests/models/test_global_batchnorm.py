"""GlobalBatchNorm: equals BatchNorm1d in training mode on one process, and the concatenated batch on two."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from metadino.models.global_batchnorm import GlobalBatchNorm
from metadino.models.heads import DINOHead
from testkit import join_group, launch_ranks, leave_group, rank_part

WORLD = 2
SPLITS = {"unequal": (5, 3), "empty": (8, 0)}


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"x": torch.randn(8, 6, generator=gen) * 2 + 1, "c": torch.randn(8, 6, generator=gen)}


def _bn() -> GlobalBatchNorm:
    bn = GlobalBatchNorm(6)
    with torch.no_grad():  # non-trivial affine so that its gradients are checked too
        bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
        bn.bias.copy_(torch.linspace(-1, 1, 6))
    return bn


def _single(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    bn, x = _bn(), x.clone().requires_grad_()
    y = bn(x)
    (y * c).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad


def test_matches_batchnorm1d_in_training_mode():
    data = _inputs()
    ref = nn.BatchNorm1d(6, eps=1e-5, track_running_stats=False)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 1.5, 6))
        ref.bias.copy_(torch.linspace(-1, 1, 6))
    x = data["x"].clone().requires_grad_()
    (ref(x) * data["c"]).sum().backward()
    y, grad_x, grad_w, grad_b = _single(data["x"], data["c"])
    torch.testing.assert_close(y, ref(data["x"]).detach())
    torch.testing.assert_close(grad_x, x.grad)
    torch.testing.assert_close(grad_w, ref.weight.grad)
    torch.testing.assert_close(grad_b, ref.bias.grad)


def test_eval_mode_still_uses_batch_statistics_and_bf16_autocast_keeps_fp32_statistics():
    # The EMA teacher runs in eval mode and must normalise its own batch, as DINOv1's teacher did.
    x = _inputs()["x"]
    bn = _bn()
    train_y = bn(x)
    torch.testing.assert_close(bn.eval()(x), train_y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), train_y.detach(), atol=0.05, rtol=0.02)


def test_dino_head_batchnorm_removes_the_shared_component():
    # Rows that differ only slightly around a large common vector: without batch norm the unit-normalised
    # bottlenecks are nearly identical, with it they are not (the cause of uniform DINO targets at init).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, generator=gen) * 5 + torch.randn(64, 32, generator=gen) * 0.5
    for batchnorm, lo, hi in ((False, 0.8, 1.0), (True, -0.2, 0.3)):
        torch.manual_seed(0)
        head = DINOHead(32, 128, hidden_dim=64, bottleneck_dim=16, batchnorm=batchnorm)
        _, b = head(x, return_bottleneck=True)
        z = nn.functional.normalize(b, dim=-1)
        mean_cos = ((z @ z.T).sum() - 64) / (64 * 63)
        assert lo < mean_cos < hi, (batchnorm, float(mean_cos))
    assert sum(isinstance(m, GlobalBatchNorm) for m in head.mlp) == 2  # after each hidden layer, not the last


def _worker(rank: int, init_file: str, in_path: str, out_path: str) -> None:
    join_group(rank, init_file, WORLD)
    data = torch.load(in_path, weights_only=True)
    out: dict[str, torch.Tensor] = {}
    for name, split in SPLITS.items():
        bn, x = _bn(), rank_part(data["x"], split, rank).clone().requires_grad_()
        y = bn(x)
        (y * rank_part(data["c"], split, rank)).sum().backward()
        out[f"{name}/y"], out[f"{name}/grad_x"] = y.detach(), x.grad
        out[f"{name}/grad_w"], out[f"{name}/grad_b"] = bn.weight.grad, bn.bias.grad
    leave_group(out, out_path)


@pytest.fixture(scope="module")
def rank_outputs(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    return launch_ranks(__file__, WORLD, tmp_path_factory.mktemp("gbn"), _inputs())


@pytest.mark.integration
@pytest.mark.parametrize("name", list(SPLITS))
def test_two_ranks_equal_the_concatenated_batch(rank_outputs, name):
    """Forward rows and input gradients match the single process; parameter gradients summed over ranks (what
    DDP's mean of the per-rank sums of losses amounts to) match too — also with a rank that holds no rows."""
    data = _inputs()
    y, grad_x, grad_w, grad_b = _single(data["x"], data["c"])
    split = SPLITS[name]
    torch.testing.assert_close(torch.cat([o[f"{name}/y"] for o in rank_outputs]), y)
    torch.testing.assert_close(torch.cat([o[f"{name}/grad_x"] for o in rank_outputs]), grad_x)
    torch.testing.assert_close(sum(o[f"{name}/grad_w"] for o in rank_outputs), grad_w)
    torch.testing.assert_close(sum(o[f"{name}/grad_b"] for o in rank_outputs), grad_b)
    assert [o[f"{name}/y"].shape[0] for o in rank_outputs] == list(split)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
