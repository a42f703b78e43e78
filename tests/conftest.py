"""Shared fixtures. Tests never touch the network and build tiny models themselves."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from testkit import write_image_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# caches (feature cache, image pre-checks) go to a temporary folder, never the user's ~/.cache
os.environ.setdefault("METADINO_CACHE", tempfile.mkdtemp(prefix="metadino-test-cache-"))

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """`../shared/reference` beside the checkout (CI has it there); overridable for odd layouts."""
    return Path(os.environ.get("METADINO_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_values() -> dict[str, torch.Tensor]:
    """Values produced by the FINO reference implementation (fino-spec.md §15), read at test time."""
    path = reference_dir() / "fino_reference_values.pt"
    if not path.is_file():
        pytest.fail(f"reference values not found at {path}; set METADINO_REFERENCE_DIR")
    return torch.load(path, weights_only=True)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores on CI: keep each test on one intra-op thread so timings and results are stable.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def image_table(tmp_path) -> Path:
    return write_image_table(tmp_path / "data")
