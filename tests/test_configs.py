"""Every shipped config file is valid against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadino.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.table and cfg.train.steps > 0
