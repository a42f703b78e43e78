"""User-facing errors.

Anything the user can fix (a bad config key, a missing file, a wrong column) raises
:class:`UserError` with one sentence that says what is wrong, where, and how to fix it.
The CLI prints the message and exits non-zero without a traceback. Programming errors
stay ordinary exceptions so that they keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, table, images, command line)."""
