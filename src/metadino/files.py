"""Writing files without ever leaving half of one, and output folders that are ours to write into."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from metadino.errors import UserError

__all__ = ["atomic_write", "atomic_write_text", "cache_root", "check_output_file", "claim_output_dir"]


def cache_root() -> Path:
    """metadino's cache folder: ``$METADINO_CACHE``, else ``$XDG_CACHE_HOME/metadino``, else ``~/.cache/metadino``
    (the evaluation features and the image pre-checks keep their caches below it)."""
    if os.environ.get("METADINO_CACHE"):
        return Path(os.environ["METADINO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metadino"


def atomic_write(path: Path, write: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """``write(tmp)`` into a temporary name beside `path`, then rename it over `path`: a crash or a full disk leaves
    the old file (or none), never half a file, and no temporary file behind. `fsync` flushes it to disk first
    (checkpoints: the rename must not land before the data)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    return atomic_write(path, write)


def check_output_file(out: Path, *, overwrite: bool, flag: str = "--out") -> Path:
    """An output file path a command may write: not a folder, and not an existing file unless `overwrite`."""
    if out.is_dir():
        raise UserError(f"{flag} '{out}' is a folder; give the path of the file to write.")
    if out.exists() and not overwrite:
        raise UserError(f"{flag} '{out}' already exists; choose another path or pass --overwrite to replace it.")
    return out


def claim_output_dir(out: Path, marker: str, *, not_a_folder: str, not_ours: str) -> bool:
    """Make `out` a folder a command may write into: new, empty, or holding `marker` (the file the same command
    leaves in its outputs). Someone else's file or non-empty folder is refused with the given sentence, before
    anything is written. Returns whether `out` holds an earlier output of the command (the caller decides what of
    it to replace)."""
    if out.exists() and not out.is_dir():
        raise UserError(not_a_folder)
    earlier = (out / marker).is_file()
    if out.exists() and any(out.iterdir()) and not earlier:
        raise UserError(not_ours)
    out.mkdir(parents=True, exist_ok=True)
    return earlier
