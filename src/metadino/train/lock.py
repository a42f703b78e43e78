"""One run at a time per run directory: an exclusive advisory lock on ``RUN_DIR/.lock`` while a run writes to it.

Two runs into one folder would interleave their metrics and overwrite each other's checkpoints. The lock is an
``flock`` held by the main process: the operating system releases it when the process ends, however it ends, so a
killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

from metadino.errors import UserError

__all__ = ["RunLock"]

LOCK_FILE = ".lock"


class RunLock:
    """Take the lock of `run_dir` (which must exist); UserError when another process holds it."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._file: IO[str] | None = open(self.path, "a+")  # held for the lifetime of the run
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no advisory locks; the run goes ahead unlocked
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # EWOULDBLOCK: another process holds it
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise UserError(f"'{run_dir}' is in use by a run that is still writing to it ({holder}); wait for it to end "
                            "or choose another --out.") from None
        except OSError as e:  # a file system without flock (Lustre without -o flock, NFS without lockd)
            warnings.warn(f"cannot lock '{self.path}' ({e.strerror or e}): this file system has no file locks, so "
                          "nothing stops a second run from writing into the same folder.", stacklevel=2)
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
