"""What produced a run: library versions, git commit, data fingerprint."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import metadino


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The metadino checkout's commit, when installed from a git work tree."""
    here = Path(metadino.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(data_fingerprint: str, world_size: int) -> dict[str, Any]:
    return {
        "metadino": metadino.__version__,
        "git_sha": git_sha(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
    }
