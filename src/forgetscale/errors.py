"""User-facing errors.

Anything the user can fix (a missing file, an empty corpus, a reference built
for another tokenizer) raises :class:`UserError`. The command line prints its
message as one line and exits with status 2, without a traceback; Python
callers get an ordinary exception they can catch.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one clear line (exit code 2)."""

    exit_code = 2


class DivergedError(RuntimeError):
    """A loss became NaN or infinite; the run cannot continue."""
