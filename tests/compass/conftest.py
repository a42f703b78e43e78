"""A small labelled table with entangled metadata (plate nearly determines cell line) and a config file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testkit import tiny_config


def write_compass_table(folder: Path, n: int = 48, size: int = 32, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,cell_line,antibody,plate,exposure,well,constant,split"]
    for i in range(n):
        cls = i % 3
        plate = i % 4
        pixels = rng.random((size, size, 3)) * 0.5
        pixels[..., cls] += 0.5
        name = f"imgs/{i}.png"
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / name)
        split = "val" if i % 8 == 7 else "train"
        cell_line = f"L{plate % 2}"  # the plate determines the cell line
        lines.append(f"{name},{'abc'[cls]},{cell_line},A{i % 6},P{plate},{50 + 10 * plate + rng.normal():.2f},"
                     f"W{i},x,{split}")
    table = folder / "meta.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.fixture
def compass_table(tmp_path) -> Path:
    return write_compass_table(tmp_path / "data")


@pytest.fixture
def compass_config(tmp_path, compass_table) -> Path:
    cfg = tiny_config(compass_table, data={"table": str(compass_table), "rows": {"split": "train"}},
                      train={"steps": 2, "batch_size": 4, "num_workers": 0, "checkpoint_every": 2, "log_every": 1})
    cfg["guidance"] = {"balance": True, "guides": [{"column": "antibody", "head": "prototypical", "weight": 0.2}]}
    path = tmp_path / "compass.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
