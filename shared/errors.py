"""The error hierarchy.

Every failure seriesflow reports is a :class:`SeriesflowError`. It is either
*transient* (the same work may succeed if tried again: a broker or store that is down) or
*permanent* (trying again cannot help: a corrupt file, a rule that does not parse). Services
retry the first kind and dead-letter the second with its ``reason``; the command line prints
the reason and exits with a non-zero status.
"""

from __future__ import annotations


class SeriesflowError(Exception):
    """Base class. ``reason`` is a short, user-facing sentence without patient data."""

    transient: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(SeriesflowError):
    """The operation may succeed if tried again later."""

    transient = True


class PermanentError(SeriesflowError):
    """The operation cannot succeed as asked; retrying is pointless."""


class InvalidIdentifierError(PermanentError):
    """A UID or name is not safe to use in a path or object key."""


class InvalidInputError(PermanentError):
    """Input data (a file, a folder, a document) cannot be used."""


class RulesError(PermanentError):
    """Selection rules do not parse or do not validate. ``location`` names the bad rule."""

    def __init__(self, reason: str, location: str = "") -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        self.location = location


class OutputError(PermanentError):
    """An output could not be written (no space, no permission)."""
