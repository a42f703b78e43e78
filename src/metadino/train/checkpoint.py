"""Atomic, versioned training checkpoints.

Layout: ``RUN_DIR/checkpoints/step_00000100.pt`` plus a ``latest`` text file naming the newest
complete one. Each file is written to a temporary name and renamed into place, and ``latest`` is
rewritten (the same way) only after the rename, so an interrupted save never leaves a half file
under a real name and ``latest`` always names a complete checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from metadino.errors import UserError
from metadino.files import atomic_write

SCHEMA_VERSION = 1
LATEST = "latest"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def sharded_checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The folder of step `step`'s sharded (FSDP) checkpoint."""
    return checkpoint_dir(run_dir) / f"step_{step:08d}.dcp"


def point_latest(run_dir: str | Path, path: Path, *, keep: int) -> None:
    """Name `path` as the newest checkpoint and prune the older ones beyond `keep` (files and sharded folders)."""
    import shutil

    directory = checkpoint_dir(run_dir)
    atomic_write(directory / LATEST, lambda tmp: tmp.write_text(path.name + "\n"), fsync=True)
    for old in sorted(directory.glob("step_*"), key=lambda p: p.name)[:-keep]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int) -> Path:
    """Write ``state`` for `step` (the number of completed steps) and prune older checkpoints."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    payload = {"schema_version": SCHEMA_VERSION, "step": step, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp), fsync=True)
    point_latest(run_dir, path, keep=keep)
    return path


def remove_orphans(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of saves that were killed half-way (``.step_*.pt.tmp-PID``, ``.latest.tmp-PID``):
    they are never read, only take space. Returns what was removed."""
    import shutil

    directory = checkpoint_dir(run_dir)
    orphans = sorted([*directory.glob(".*.tmp-*"), *directory.glob(".*.dcp.tmp")]) if directory.is_dir() else []
    for path in orphans:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return orphans


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, newest first: the one `latest` names, then older ones by step."""
    directory = checkpoint_dir(run_dir)
    found = sorted([*directory.glob("step_*.pt"), *(p for p in directory.glob("step_*.dcp") if (p / "meta.pt").is_file())],
                   key=lambda p: p.name, reverse=True)
    pointer = directory / LATEST
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def load_checkpoint_file(path: Path, *, gather: bool = True) -> dict[str, Any]:
    """A checkpoint as one dict of full (unsharded) tensors; a sharded folder is gathered here, in this process —
    or, with ``gather=False``, only its meta plus ``sharded_path`` (for a sharded run to load its own shards)."""
    if path.is_dir():
        return _load_sharded_as_full(path) if gather else _load_sharded_meta(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt zips
        raise UserError(f"checkpoint '{path}' cannot be read (it is probably truncated or corrupt): {e}") from None
    if not isinstance(state, dict) or state.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"checkpoint '{path}' is not a metadino checkpoint of schema version {SCHEMA_VERSION}.")
    return state


def load_latest_checkpoint(run_dir: str | Path, *, gather: bool = True) -> dict[str, Any]:
    """The newest readable checkpoint; a corrupt newest one falls back to the previous with a warning. ``gather``:
    see :func:`load_checkpoint_file`."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise UserError(f"no checkpoint found in '{checkpoint_dir(run_dir)}'; nothing to resume or export.")
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint_file(path, gather=gather)
        except UserError as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"skipped unreadable checkpoint(s): {'; '.join(errors)}; using '{path.name}'.", stacklevel=2)
        return state
    raise UserError(f"every checkpoint in '{checkpoint_dir(run_dir)}' is unreadable: {'; '.join(errors)}")


def _load_sharded_meta(path: Path) -> dict[str, Any]:
    try:
        meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or missing meta file
        raise UserError(f"sharded checkpoint '{path}' cannot be read (its meta.pt is missing or torn): {e}") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"checkpoint '{path}' is not a metadino checkpoint of schema version {SCHEMA_VERSION}.")
    return {**meta, "sharded": True, "sharded_path": path}


def _load_sharded_as_full(path: Path) -> dict[str, Any]:
    """A sharded (DCP) checkpoint folder as one dict: its meta plus ``task`` and ``optimizer`` with full tensors."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    try:
        meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(path), str(Path(tmp) / "full.pt"))
            full = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # DCP and torch raise several types for missing or torn shards
        raise UserError(f"sharded checkpoint '{path}' cannot be read (a shard is missing or torn?): {e}") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"checkpoint '{path}' is not a metadino checkpoint of schema version {SCHEMA_VERSION}.")
    return {**meta, "task": full["task"], "optimizer": full["optimizer"], "sharded": True}
