"""Cross-rank exactness of Sinkhorn-Knopp, SoftmaxCenter and SIGReg with 2 gloo processes on CPU.

The parent writes the inputs, launches this file as a script once per rank (so the workers never depend on how
pytest imported the module), and compares what the ranks saved with single-process results on the
concatenated batch.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from metadino.losses.centering import SoftmaxCenter, sinkhorn_knopp
from metadino.losses.sigreg import SIGReg
from testkit import join_group, launch_ranks, leave_group, rank_part

WORLD = 2
TEMP = 0.07
SK_SPLITS = {"equal": (6, 6), "unequal": (9, 3), "zero": (12, 0)}  # rows per rank; "zero" is the iBOT case
CENTER_SPLITS = ((7, 3), (0, 5))  # two successive updates, the second with an empty rank
SIG_SPLITS = {"diff": (24, 16), "ref": (20, 20)}  # the reference's plain /W is only exact for equal splits
SIG_SLICES, SIG_SEED = 32, 5


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "sk": torch.randn(12, 64, generator=gen) * 3.0,
        "center0": torch.randn(10, 64, generator=gen),
        "center1": torch.randn(5, 64, generator=gen) + 1.0,
        "z": torch.randn(40, 16, generator=gen) * 1.5 + 0.3,
        "x": torch.randn(40, 8, generator=gen),
    }


def _linear() -> nn.Linear:
    torch.manual_seed(3)
    return nn.Linear(8, 16)


def _worker(rank: int, init_file: str, in_path: str, out_path: str) -> None:
    join_group(rank, init_file, WORLD)
    data = torch.load(in_path, weights_only=True)
    out: dict[str, torch.Tensor] = {}
    for name, split in SK_SPLITS.items():
        out[f"sk/{name}"] = sinkhorn_knopp(rank_part(data["sk"], split, rank), TEMP)

    center = SoftmaxCenter(64)
    for i, split in enumerate(CENTER_SPLITS):
        center.update(rank_part(data[f"center{i}"], split, rank))
    out["center"] = center.center.clone()

    for mode, split in SIG_SPLITS.items():
        sig = SIGReg(num_slices=SIG_SLICES, reference_scaling=mode == "ref")
        z = rank_part(data["z"], split, rank).clone().requires_grad_()
        loss = sig(z, seed_step=SIG_SEED)
        loss.backward()
        out[f"sig/{mode}/loss"], out[f"sig/{mode}/grad_z"] = loss.detach(), z.grad
        # Real DDP on a linear layer: its parameter gradient is the mean over ranks.
        model = nn.parallel.DistributedDataParallel(_linear())
        sig(model(rank_part(data["x"], split, rank)), seed_step=SIG_SEED).backward()
        out[f"sig/{mode}/grad_w"] = model.module.weight.grad.clone()
        del model  # free DDP (it holds the process group) before the group is destroyed
    leave_group(out, out_path)


@pytest.fixture(scope="module")
def rank_outputs(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    return launch_ranks(__file__, WORLD, tmp_path_factory.mktemp("dist"), _inputs())


pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", list(SK_SPLITS))
def test_sinkhorn_split_equals_concatenated(rank_outputs, name):
    expected = sinkhorn_knopp(_inputs()["sk"], TEMP)
    got = torch.cat([out[f"sk/{name}"] for out in rank_outputs])
    assert [out[f"sk/{name}"].shape[0] for out in rank_outputs] == list(SK_SPLITS[name])
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)


def test_softmax_center_update_equals_concatenated(rank_outputs):
    data = _inputs()
    center = SoftmaxCenter(64)
    center.update(data["center0"])
    center.update(data["center1"])
    for out in rank_outputs:
        torch.testing.assert_close(out["center"], center.center, atol=1e-7, rtol=1e-6)


def _single_process() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = _inputs()
    sig = SIGReg(num_slices=SIG_SLICES)
    z = data["z"].clone().requires_grad_()
    loss = sig(z, seed_step=SIG_SEED)
    loss.backward()
    model = _linear()
    sig(model(data["x"]), seed_step=SIG_SEED).backward()
    return loss.detach(), z.grad, model.weight.grad


def test_sigreg_differentiable_gives_global_batch_gradient(rank_outputs):
    """Default mode: every rank's loss is the global-batch loss; rank r's z.grad is W x the single-process
    gradient of its rows, so z.grad / W (DDP's averaging) equals it, and the DDP-averaged weight gradient equals
    the single-process one. Unequal split (24, 16) to check the count-weighted mean."""
    loss, grad_z, grad_w = _single_process()
    split = SIG_SPLITS["diff"]
    for r, out in enumerate(rank_outputs):
        torch.testing.assert_close(out["sig/diff/loss"], loss, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(out["sig/diff/grad_z"] / WORLD, rank_part(grad_z, split, r), atol=1e-9, rtol=1e-4)
        torch.testing.assert_close(out["sig/diff/grad_w"], grad_w, atol=1e-8, rtol=1e-4)


def test_sigreg_reference_scaling_gives_one_over_w(rank_outputs):
    """reference_scaling: same loss value, identity gradient (z.grad equals the single-process rows unscaled),
    so after DDP averaging the weight gradient is 1/W of the global-batch gradient (spec §0.2)."""
    loss, grad_z, grad_w = _single_process()
    split = SIG_SPLITS["ref"]
    for r, out in enumerate(rank_outputs):
        torch.testing.assert_close(out["sig/ref/loss"], loss, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(out["sig/ref/grad_z"], rank_part(grad_z, split, r), atol=1e-9, rtol=1e-4)
        torch.testing.assert_close(out["sig/ref/grad_w"], grad_w / WORLD, atol=1e-8, rtol=1e-4)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
