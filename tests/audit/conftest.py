"""Fixtures of the audit tests: a small synthetic table and a tiny exported model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from metadino.data.synthetic import generate_dataset
from metadino.models.directory import write_export
from metadino.models.preprocessing import Preprocessing
from metadino.models.registry import build_backbone


@pytest.fixture(scope="package")
def synthetic(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn"), n_images=240, image_size=32, channels=3, seed=0)


@pytest.fixture(scope="package")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=32, depth=2, num_heads=2)
    return write_export(backbone, tmp_path_factory.mktemp("model"), replace(Preprocessing.default_for(backbone), image_size=32))
