"""Cross-rank exactness of the prototype-bank update and of guide balancing with 2 gloo processes on CPU.

The parent writes the inputs, launches this file as a script once per rank (so the workers never depend on how
pytest imported the module), and compares what the ranks saved with single-process results on the
concatenated batch.
"""

from __future__ import annotations

import sys

import pytest
import torch

from metadino.guidance import MLPClassifier, MLPRegressor, PrototypeBank, balance_guides
from testkit import join_group, launch_ranks, leave_group

WORLD = 2
DIM, N_CLS = 16, 5
# Rows per rank for three successive bank updates: unequal, equal, one empty rank.
BANK_SPLITS = ((7, 5), (6, 6), (12, 0))
BAL_SPLIT = (6, 6)  # equal per-rank batches: the global-batch norm convention is exact there
LAM = {"cls": -0.6, "reg": 0.6, "proto": 0.6}
WEIGHT = {"cls": 0.003, "reg": 0.05, "proto": 0.03}


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    data: dict[str, torch.Tensor] = {}
    for i in range(len(BANK_SPLITS)):
        data[f"t{i}"] = torch.randn(2, 12, DIM, generator=gen)
        data[f"y{i}"] = torch.randint(0, N_CLS, (12,), generator=gen)
        valid = torch.rand(12, generator=gen) > 0.25
        valid[0] = True
        data[f"valid{i}"] = valid
        data[f"y{i}"] = data[f"y{i}"].masked_fill(~valid, -1)  # what a missing value looks like
    data["z"] = torch.randn(2, 12, DIM, generator=gen)
    data["yc"] = torch.randint(0, 3, (12,), generator=gen)
    data["yr"] = torch.rand(12, generator=gen) * 10.0
    data["yp"] = torch.randint(0, N_CLS, (12,), generator=gen)
    return data


def _part(x: torch.Tensor, split: tuple[int, ...], rank: int) -> torch.Tensor:
    """Rows of rank `rank` along the batch dim (dim 1 for [n_crops, B, ...], else dim 0)."""
    start = sum(split[:rank])
    return x[:, start:start + split[rank]] if x.dim() == 3 else x[start:start + split[rank]]


def _bank() -> PrototypeBank:
    bank = PrototypeBank(DIM, N_CLS, temperature=0.1, momentum=0.9, phi_min=0.01)
    bank.reset_buffers(torch.Generator().manual_seed(11))  # same generator seed: identical banks on all ranks
    return bank


def _run_bank(data: dict[str, torch.Tensor], rank: int | None) -> dict[str, torch.Tensor]:
    """Bank state after each update; `rank=None` is the single process on the concatenated batches."""
    bank, out = _bank(), {}
    for i, split in enumerate(BANK_SPLITS):
        t, y, v = data[f"t{i}"], data[f"y{i}"], data[f"valid{i}"]
        if rank is not None:
            t, y, v = _part(t, split, rank), _part(y, split, rank), _part(v, split, rank)
        bank.update(t, y, v)
        for k, val in bank.state_dict().items():
            out[f"bank{i}/{k}"] = val.clone()
    return out


def _balance(data: dict[str, torch.Tensor], rank: int | None, per_rank: bool) -> dict[str, torch.Tensor]:
    """Three guides (classifier with reversal, regressor, prototypes) balanced at the anchor."""
    z, yc, yr, yp = data["z"], data["yc"], data["yr"], data["yp"]
    if rank is not None:
        z, yc, yr, yp = (_part(x, BAL_SPLIT, rank) for x in (z, yc, yr, yp))
    torch.manual_seed(21)
    heads = {"cls": MLPClassifier(DIM, 3, [8], 0.0, False), "reg": MLPRegressor(DIM, 1, [8], 0.0, "none", 0.0, 10.0),
             "proto": _bank()}
    z = z.clone().requires_grad_()
    targets = {"cls": yc, "reg": yr, "proto": yp}
    losses = {k: WEIGHT[k] * h.loss(z, targets[k], None, LAM[k]).loss for k, h in heads.items()}
    _, scales, norms, target = balance_guides(losses, z, per_rank=per_rank)
    return {"scales": torch.tensor([scales[k] for k in LAM], dtype=torch.float64),
            "norms": torch.tensor([norms[k] for k in LAM], dtype=torch.float64),
            "target": torch.tensor(target, dtype=torch.float64)}


def _worker(rank: int, init_file: str, in_path: str, out_path: str) -> None:
    join_group(rank, init_file, WORLD)
    data = torch.load(in_path, weights_only=True)
    out = _run_bank(data, rank)
    for mode, per_rank in (("global", False), ("local", True)):
        out.update({f"{mode}/{k}": v for k, v in _balance(data, rank, per_rank).items()})
    leave_group(out, out_path)


@pytest.fixture(scope="module")
def rank_outputs(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    return launch_ranks(__file__, WORLD, tmp_path_factory.mktemp("dist"), _inputs())


pytestmark = pytest.mark.integration


@pytest.mark.parametrize("step", range(len(BANK_SPLITS)))
def test_bank_update_equals_concatenated_batch(rank_outputs, step):
    """Unequal splits, an empty rank and invalid samples: every rank holds the global-batch bank, bit for bit."""
    expected = _run_bank(_inputs(), None)
    for k in ("centroids", "concentration", "counts"):
        key = f"bank{step}/{k}"
        assert torch.equal(rank_outputs[0][key], rank_outputs[1][key]), key  # ranks never drift apart
        torch.testing.assert_close(rank_outputs[0][key], expected[key], rtol=1e-6, atol=1e-7)
    assert rank_outputs[0][f"bank{step}/counts"].sum() == 2 * sum(
        int(_inputs()[f"valid{i}"].sum()) for i in range(step + 1))


def test_balance_global_norms_equal_single_process(rank_outputs):
    expected = _balance(_inputs(), None, per_rank=False)
    for k in ("scales", "norms", "target"):
        assert torch.equal(rank_outputs[0][f"global/{k}"], rank_outputs[1][f"global/{k}"]), k
        torch.testing.assert_close(rank_outputs[0][f"global/{k}"], expected[k], rtol=1e-5, atol=0)
    assert not torch.all(expected["scales"] == 1)  # the check is not vacuous


def test_balance_per_rank_uses_local_norms(rank_outputs):
    data = _inputs()
    for r, out in enumerate(rank_outputs):
        chunk = {k: _part(v, BAL_SPLIT, r) if k in ("z", "yc", "yr", "yp") else v for k, v in data.items()}
        expected = _balance(chunk, None, per_rank=True)
        for k in ("scales", "norms", "target"):
            torch.testing.assert_close(out[f"local/{k}"], expected[k], rtol=1e-5, atol=0)
    assert not torch.allclose(rank_outputs[0]["local/norms"], rank_outputs[1]["local/norms"])


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
