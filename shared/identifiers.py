"""Validation of every identifier that becomes part of a file name, path or object key.

A DICOM UID (PS3.5 9.1) is at most 64 characters of digits and dots, made of components
that have no leading zero. A name (AE title, pipeline, selection) is printable, without
path separators, ``..`` or control characters. Anything else is refused here, before it can
reach a path.
"""

from __future__ import annotations

import re

from shared.errors import InvalidIdentifierError

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+=@,()\[\]-]{0,127}$")


def is_valid_uid(value: str) -> bool:
    """True if ``value`` is a syntactically valid DICOM UID."""
    return len(value) <= 64 and bool(_UID.match(value))


def validate_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise :class:`InvalidIdentifierError`."""
    if not isinstance(value, str) or not is_valid_uid(value):
        raise InvalidIdentifierError(f"{what} {value!r} is not a valid DICOM UID")
    return value


def validate_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe name, else raise :class:`InvalidIdentifierError`."""
    if not isinstance(value, str) or ".." in value or not _NAME.match(value):
        raise InvalidIdentifierError(
            f"{what} {value!r} must start with a letter or digit and hold only letters, "
            "digits, spaces and _.+=@,()[]- (at most 128 characters, no '..')"
        )
    return value
