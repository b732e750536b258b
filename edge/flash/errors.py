"""The one exception `edge-flash` raises for problems the user can fix."""

from __future__ import annotations


class FlashError(Exception):
    """A flashing step failed or its input is wrong; the message says what and what to do next.

    ``edge-flash`` prints it as one line (plus ``details``, e.g. a remote self-test's output,
    above it) and exits non-zero, without a traceback.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
