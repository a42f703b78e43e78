from __future__ import annotations

from collections import Counter

import torch

from metadino.data.dataset import StepSampler, collate_crops


def test_sampler_covers_each_epoch_once():
    s = StepSampler(10, batch_size=4, total_steps=5, seed=3)
    seen = [key for batch in s for key in batch]
    assert len(seen) == 20
    per_epoch = Counter(e for e, _ in seen)
    assert per_epoch == {0: 10, 1: 10}
    for epoch in (0, 1):
        assert sorted(i for e, i in seen if e == epoch) == list(range(10))
    # a new seed shuffles differently
    other = [key for batch in StepSampler(10, batch_size=4, total_steps=5, seed=4) for key in batch]
    assert other != seen


def test_sampler_is_world_size_and_resume_invariant():
    single = list(StepSampler(13, batch_size=6, total_steps=7, seed=0))
    ranks = [list(StepSampler(13, batch_size=3, total_steps=7, seed=0, rank=r, world_size=2)) for r in range(2)]
    for step in range(7):
        assert ranks[0][step] + ranks[1][step] == single[step]
    resumed = list(StepSampler(13, batch_size=6, total_steps=7, seed=0, start_step=4))
    assert resumed == single[4:]


def test_collate_is_crop_major():
    samples = []
    for b in range(3):
        samples.append(
            {
                "global": [torch.full((2, 4, 4), 10.0 * b + j) for j in range(2)],
                "local": [torch.full((2, 2, 2), 100.0 + 10 * b + j) for j in range(3)],
                "masks": [torch.tensor([b == j, False]) for j in range(2)],
                "index": b,
            }
        )
    batch = collate_crops(samples)
    assert batch["global"].shape == (6, 2, 4, 4) and batch["local"].shape == (9, 2, 2, 2)
    # row crop*B + b holds crop `crop` of sample b
    assert batch["global"][1 * 3 + 2, 0, 0, 0] == 21.0
    assert batch["local"][2 * 3 + 1, 0, 0, 0] == 112.0
    assert batch["masks"][:, 0].tolist() == [True, False, False, False, True, False]
    assert batch["index"].tolist() == [0, 1, 2]
