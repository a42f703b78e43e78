"""The typed training batch (data/batch.py)."""

from __future__ import annotations

import torch

from metadino.data.batch import Batch, Target


def test_to_moves_every_tensor_and_keeps_the_structure():
    batch = Batch(torch.zeros(4, 3, 8, 8), None, torch.zeros(4, 1, dtype=torch.bool), torch.arange(2),
                  {"plate": Target(torch.tensor([1, 0]), torch.tensor([True, False]))})
    moved = batch.to(torch.device("meta"))
    assert moved.global_crops.device.type == "meta" and moved.local_crops is None
    assert moved.targets["plate"].valid.device.type == "meta" and moved.index.device.type == "meta"
    assert batch.global_crops.device.type == "cpu"  # a new batch, the old one untouched
    values, valid = moved.targets["plate"]  # a Target unpacks as (values, valid)
    assert values.shape == valid.shape == (2,)
