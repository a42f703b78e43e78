"""Atomic writes and owned output folders (metadino/files.py)."""

from __future__ import annotations

import pytest

from metadino.errors import UserError
from metadino.files import atomic_write, atomic_write_text, claim_output_dir


def test_atomic_write_keeps_the_old_file_and_no_temporary_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no .tmp left behind
    atomic_write(path, lambda tmp: tmp.write_text("new"), fsync=True)
    assert path.read_text() == "new"


def test_claim_output_dir_refuses_a_file_and_someone_elses_folder_and_accepts_its_own(tmp_path):
    kw = {"not_a_folder": "a file", "not_ours": "not ours"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a file"):
        claim_output_dir(tmp_path / "file", ".mark", **kw)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not ours"):
        claim_output_dir(tmp_path / "theirs", ".mark", **kw)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "precious"
    assert claim_output_dir(tmp_path / "new" / "deep", ".mark", **kw) is False  # created
    (tmp_path / "new" / "deep" / ".mark").write_text("")
    (tmp_path / "new" / "deep" / "metrics.json").write_text("{}")
    assert claim_output_dir(tmp_path / "new" / "deep", ".mark", **kw) is True  # an earlier output of ours
