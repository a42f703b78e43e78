"""Helpers for the importer tests: tiny real image files, running an import, and checking the data: snippet."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from metadino.config import DataConfig, config_from_dict, load_config
from metadino.importers import run_import

NEW_DATA_KEYS = {"image_template", "channels", "channel_columns", "index_column"}  # the data layer's new keys


@pytest.fixture
def png() -> Callable[..., Path]:
    """Write a tiny real PNG (8-bit gray or RGB) at a path, parents created."""
    from PIL import Image

    def write(path: Path, *, rgb: bool = True, size: int = 8, value: int = 100) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (size, size, 3) if rgb else (size, size)
        Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
        return path

    return write


@pytest.fixture
def jpg() -> Callable[[Path], Path]:
    from PIL import Image

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(path, format="JPEG")
        return path

    return write


@dataclasses.dataclass
class Result:
    summary: str
    table: pd.DataFrame
    snippet: dict[str, Any]
    snippet_path: Path


@pytest.fixture
def do_import(tmp_path) -> Callable[..., Result]:
    """Run an import into tmp_path/out/<name>; return the summary, the table as read back (cells as text, empty
    cells as NaN) and the snippet's data: block."""

    def run(layout: str, source: Path, *, name: str = "meta.csv", **kwargs: Any) -> Result:
        out = tmp_path / "out" / name
        summary = run_import(layout, source, out, **kwargs)
        if out.suffix == ".parquet":
            table = pd.read_parquet(out)
        else:
            table = pd.read_csv(out, dtype=str, keep_default_na=False, na_values=[""])
        snippet_path = out.with_name(out.stem + ".data.yaml")
        return Result(summary, table, yaml.safe_load(snippet_path.read_text())["data"], snippet_path)

    return run


def check_snippet(path: Path, keys: list[str]) -> DataConfig:
    """The snippet names exactly `keys` under data: and loads with metadino.config. Keys the data layer has not
    landed yet (NEW_DATA_KEYS) are set aside for the config check until DataConfig knows them."""
    text = yaml.safe_load(path.read_text())
    assert list(text) == ["data"]
    assert list(text["data"]) == keys
    known = {f.name for f in dataclasses.fields(DataConfig)}
    pending = set(keys) - known
    assert pending <= NEW_DATA_KEYS, f"snippet keys that no one provides: {pending - NEW_DATA_KEYS}"
    if pending:
        cfg = config_from_dict({"data": {k: v for k, v in text["data"].items() if k not in pending}})
    else:
        cfg = load_config(path)
    assert cfg.data.table == text["data"]["table"] and Path(cfg.data.table).is_file()
    assert cfg.data.root == text["data"]["root"] and Path(cfg.data.root).is_dir()
    return cfg.data
