"""A stop request: SIGTERM/SIGINT set a flag; the loop finishes the step, checkpoints and exits (preemption-safe)."""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopRequest"]


class StopRequest:
    """Context manager; ``requested`` turns True on the first SIGTERM/SIGINT, a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
