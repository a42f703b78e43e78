from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from metadino.data.crops import MultiCropAugmentation
from metadino.data.dataset import SSLDataset, StepSampler, collate_crops
from metadino.data.images import load_image
from metadino.data.photometric import build_photometric
from metadino.data.regions import Region, load_regions
from metadino.data.table import load_table
from metadino.errors import UserError


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
    assert batch.global_crops.shape == (6, 2, 4, 4) and batch.local_crops.shape == (9, 2, 2, 2)
    # row crop*B + b holds crop `crop` of sample b
    assert batch.global_crops[1 * 3 + 2, 0, 0, 0] == 21.0
    assert batch.local_crops[2 * 3 + 1, 0, 0, 0] == 112.0
    assert batch.masks[:, 0].tolist() == [True, False, False, False, True, False]
    assert batch.index.tolist() == [0, 1, 2]


def _region_table(folder: Path, boxes: list[str]) -> Path:
    rng = np.random.default_rng(0)
    (folder / "imgs").mkdir()
    lines = ["path,x0,y0,x1,y1"]
    for i, box in enumerate(boxes):
        np.save(folder / f"imgs/{i}.npy", rng.random((2, 40, 48)).astype(np.float32))
        lines.append(f"imgs/{i}.npy,{box}")
    (folder / "meta.csv").write_text("\n".join(lines) + "\n")
    return folder / "meta.csv"


def _lg_aug(share: float) -> MultiCropAugmentation:
    return MultiCropAugmentation(
        global_size=16, local_size=8, n_local=3, photometric=build_photometric("satellite", in_chans=2),
        patch_size=8, label_guided_share=share,
    )


def test_dataset_passes_each_rows_region_and_rows_without_one_fall_back(tmp_path: Path) -> None:
    table = load_table(_region_table(tmp_path, ["30,2,40,9", ",,,", "0,0,48,40"]), image_column="path")
    regions = load_regions(table, bbox_columns=["x0", "y0", "x1", "y1"])
    ds = SSLDataset(table, _lg_aug(1.0), seed=4, in_chans=2, regions=regions)
    plain = SSLDataset(table, _lg_aug(1.0), seed=4, in_chans=2)  # no regions at all
    for index, box in ((0, (30.0, 2.0, 40.0, 9.0)), (1, None), (2, (0.0, 0.0, 48.0, 40.0))):
        image = load_image(table.paths[index])
        region = None if box is None else Region(*box)
        expected = _lg_aug(1.0)(image, seed=4, epoch=3, index=index, region=region)
        sample, ref = ds[(3, index)], plain[(3, index)]
        for got, want in zip(sample["local"] + sample["global"], expected.local_crops + expected.global_crops):
            assert torch.equal(got, want)
        same_local = all(torch.equal(a, b) for a, b in zip(sample["local"], ref["local"]))
        assert same_local == (box is None)  # only rows with a region change their local crops
    # share 0: regions are not even read, crops are today's
    off = SSLDataset(table, _lg_aug(0.0), seed=4, in_chans=2, regions=regions)
    assert all(torch.equal(a, b) for a, b in zip(off[(0, 0)]["local"], plain[(0, 0)]["local"]))
    with pytest.raises(ValueError, match="rows"):
        SSLDataset(load_table(tmp_path / "meta.csv", image_column="path", rows={"x0": "30"}), _lg_aug(1.0),
                   seed=0, in_chans=2, regions=regions)


def test_dataset_region_errors_name_the_row(tmp_path: Path) -> None:
    table = load_table(_region_table(tmp_path, ["1,2,3,4", "1,2,60,4"]), image_column="path")
    regions = load_regions(table, bbox_columns=["x0", "y0", "x1", "y1"], check_sizes=False)
    ds = SSLDataset(table, _lg_aug(0.5), seed=0, in_chans=2, regions=regions)
    ds[(0, 0)]
    with pytest.raises(UserError, match=r"meta\.csv row 2: the box \(1, 2, 60, 4\) .* outside image 1\.npy of width 48"):
        ds[(0, 1)]
