"""User-facing errors.

Anything the user can fix (a bad config key, a missing file, a wrong column) raises
:class:`UserError` with one sentence that says what is wrong, where, and how to fix it.
The CLI prints the message and exits non-zero without a traceback. Programming errors
stay ordinary exceptions so that they keep their tracebacks.

A :class:`UserError` raised inside a torch DataLoader worker is re-raised by torch in the main process as
``UserError("Caught UserError in DataLoader worker process 0.\\nOriginal Traceback ...")``; the constructor
recovers the original message from that text, so the user reads the same line with or without workers.
"""

from __future__ import annotations

import re
from typing import Any

# torch/_utils.py ExceptionWrapper.reraise: "Caught {type} {where}.\nOriginal {formatted traceback}"
_WRAPPED = re.compile(r"Caught (?P<name>\w+) (?:in DataLoader worker process \d+|in pin memory thread[^\n]*)\.\n"
                      r"Original Traceback \(most recent call last\):\n")


def _unwrap(message: str) -> str:
    """The original message of a worker's UserError re-raised by torch; any other message unchanged."""
    match = _WRAPPED.match(message)
    if match is None:
        return message
    # The formatted traceback ends with "<module>.<Name>: <message>" (then, on Python >= 3.11, any notes).
    finals = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(match['name'])}: ", message, flags=re.MULTILINE))
    if not finals:
        return message
    return message[finals[-1].end():].rstrip("\n")


class UserError(Exception):
    """A mistake in the user's input (config, table, images, command line)."""

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap(args[0]),)
        super().__init__(*args)
