"""The run's data come from the data.* keys: channel files, stack items, tiles and the reading options reach both
the pre-check and the loader workers, and the export records the channel names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from metadino.config import config_from_dict
from metadino.errors import UserError
from metadino.export import export_run
from metadino.train.loop import train
from testkit import tiny_config

HPA = ["red", "green", "blue", "yellow"]


def _hpa_table(folder: Path, n: int = 8, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    (folder / "train").mkdir(parents=True)
    ids = [f"id{i}" for i in range(n)]
    for id_ in ids:
        for colour in HPA:
            tifffile.imwrite(folder / "train" / f"{id_}_{colour}.tif", rng.integers(1, 65535, (size, size), np.uint16))
    pd.DataFrame({"Id": ids, "cell_line": ["A", "B"] * (n // 2)}).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def _cfg(table: Path, data: dict, **sections) -> dict:
    cfg = tiny_config(table, model={"in_chans": 4}, crops={"photometric": "microscopy", "global_size": 32,
                                                           "local_size": 16, "n_local": 2},
                      train={"steps": 2, "checkpoint_every": 2, "num_workers": 1}, **sections)
    cfg["data"].update(data)
    return cfg


def test_channel_files_train_in_workers_and_the_export_names_the_channels(tmp_path):
    table = _hpa_table(tmp_path / "hpa")
    data = {"image_template": "{Id}_{channel}.tif", "channels": HPA, "root": str(tmp_path / "hpa" / "train")}
    result = train(config_from_dict(_cfg(table, data)), tmp_path / "run", progress=False)
    assert result.finished
    export_run(tmp_path / "run", tmp_path / "export")
    pre = json.loads((tmp_path / "export" / "preprocessing.json").read_text())
    assert pre["channels"] == HPA and pre["in_chans"] == 4


def test_nodata_policy_reaches_the_precheck_and_the_workers(tmp_path):
    table = _hpa_table(tmp_path / "hpa")
    hole = tifffile.imread(tmp_path / "hpa" / "train" / "id3_green.tif")
    hole[:5, :5] = 0  # a no-data corner in one channel file
    tifffile.imwrite(tmp_path / "hpa" / "train" / "id3_green.tif", hole)
    data = {"image_template": "{Id}_{channel}.tif", "channels": HPA, "root": str(tmp_path / "hpa" / "train"),
            "read": {"nodata_value": 0}}
    with pytest.raises(UserError, match=r"1 of 8 selected images.*\n  train\.csv row 4: image '.*id3_red\.tif': "
                                        r"image .*id3_green\.tif has 25 no-data pixels \(NaN or 0\)"):
        train(config_from_dict(_cfg(table, data)), tmp_path / "strict", progress=False)
    data["read"] = {"nodata_value": 0, "nodata": "mean"}
    assert train(config_from_dict(_cfg(table, data)), tmp_path / "mean", progress=False).finished


def test_stack_items_train(tmp_path):
    stack = np.random.default_rng(1).integers(0, 255, (6, 40, 40, 4), dtype=np.uint8)
    np.save(tmp_path / "train_images.npy", stack)
    pd.DataFrame({"path": ["train_images.npy"] * 6, "index": range(6), "label": [0, 1] * 3}).to_csv(
        tmp_path / "t.csv", index=False)
    result = train(config_from_dict(_cfg(tmp_path / "t.csv", {"index_column": "index"})), tmp_path / "run",
                   progress=False)
    assert result.finished
