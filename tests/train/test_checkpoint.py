from __future__ import annotations

import pytest
import torch

from metadino.errors import UserError
from metadino.train import checkpoint as ckpt


def test_atomic_save_latest_and_pruning(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_00000002.pt", "step_00000003.pt"]
    state = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 3 and state["schema_version"] == ckpt.SCHEMA_VERSION
    assert torch.equal(state["w"], torch.full((2,), 3.0))


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, keep=3)

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.ones(1)}, keep=3)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["latest", "step_00000001.pt"]  # no half file under a real name, no temp left behind
    assert ckpt.load_latest_checkpoint(tmp_path)["step"] == 1


def test_corrupt_newest_falls_back_with_warning(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, keep=3)
    path = ckpt.save_checkpoint(tmp_path, 2, {"w": torch.ones(1)}, keep=3)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with pytest.warns(UserWarning, match="step_00000002.pt"):
        state = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 1


def test_no_or_only_corrupt_checkpoints(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        ckpt.load_latest_checkpoint(tmp_path)
    path = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, keep=3)
    path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="truncated or corrupt"):
        ckpt.load_latest_checkpoint(tmp_path)


def test_when_every_checkpoint_is_corrupt_the_message_lists_them_all(tmp_path):
    for step in (2, 4):
        ckpt.save_checkpoint(tmp_path, step, {"x": torch.zeros(1)}, keep=3)
        (ckpt.checkpoint_dir(tmp_path) / f"step_{step:08d}.pt").write_bytes(b"truncated")
    with pytest.raises(UserError, match="every checkpoint in .* is unreadable") as e:
        ckpt.load_latest_checkpoint(tmp_path)
    assert "step_00000002.pt" in str(e.value) and "step_00000004.pt" in str(e.value)
