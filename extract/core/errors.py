"""The one exception type for problems a user can fix (bad path, bad option, mismatched files).

Library code raises :class:`UserError` with a one-line message that says what was wrong and what to
do; ``cli.py`` turns it into a clean ``Error: ...`` line and a non-zero exit code. Bugs stay ordinary
exceptions so they keep their tracebacks.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input or options that the user can fix; the message says how."""
