"""The one exception type users see for bad input.

Every check on user-supplied values raises :class:`LFMError` with a message
that names the argument, what was expected, what arrived and how to fix it.
The CLI prints such errors as one line and exits non-zero; anything else is a
bug and keeps its traceback.
"""


class LFMError(ValueError):
    """Bad input, impossible optics or an unreadable/foreign file."""
