"""Attribute names a rule may use, and how attribute values are read and shown.

A rule names an attribute by its DICOM keyword (``SeriesDescription``), by its tag as eight
hexadecimal digits (``0008103E``), or by one of the derived attributes below, which are
computed from the converted volume rather than read from the DICOM header.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import keyword_dict, keyword_for_tag, tag_for_keyword

DERIVED_ATTRIBUTES: dict[str, str] = {
    "SliceCount": "number of slices in the volume",
    "TimepointCount": "number of timepoints (1 for a 3D volume)",
    "Orientation": "AXIAL, CORONAL, SAGITTAL or OBLIQUE, from the volume's direction cosines",
    "InstanceCount": "number of DICOM instances the volume was made from",
    "Shape": "voxels along columns, rows, slices[, timepoints]",
    "Spacing": "mm between columns, rows and slices",
    "PixelType": "numpy type of the written voxels, e.g. int16",
    "Components": "samples per voxel (3 for RGB)",
    "StackNumber": "1-based number of the volume's stack within its series",
    "StackCount": "number of volumes the series was converted into",
    "ImageKind": "MAGNITUDE, PHASE, FIELD_MAP_HZ, TRACE, … when known (dicom-metadata.json)",
    "PhaseEncodingPolarity": "NORMAL or REVERSED, for series that record it (GE epi_pepolar)",
    "TimeSpacing": "seconds between the timepoints of a 4-D volume",
    "VolumeKey": "the volume's key in series-images.json",
    "ImageFile": "the volume's image file name",
}
"""Derived attributes: name -> what it holds."""

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_MAX_SHOWN = 160


def resolve_attribute(name: str) -> str | None:
    """The name under which ``name``'s values appear in a candidate's view, or None.

    Keywords and derived names resolve to themselves; a hexadecimal tag resolves to its
    keyword when it has one (``0008103E`` -> ``SeriesDescription``), else to its upper-case
    form, which is how private and unknown tags are indexed.
    """
    if name in DERIVED_ATTRIBUTES:
        return name
    if _HEX_TAG.match(name):
        return keyword_for_tag(int(name, 16)) or name.upper()
    if tag_for_keyword(name) is not None:
        return name
    return None


def suggest_attribute(name: str) -> str | None:
    """The known attribute name closest to a misspelt ``name``, if any is close."""
    by_lower = {k.lower(): k for k in (*keyword_dict, *DERIVED_ATTRIBUTES)}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.8)
    return by_lower[close[0]] if close else None


def as_number(value: Any) -> float | None:
    """``value`` as a finite float: numbers, and strings such as DS ``"5.0"``; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def is_scalar(value: Any) -> bool:
    """True for the values a condition can compare: strings and numbers (not booleans)."""
    return isinstance(value, str) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def value_text(value: Any) -> str:
    """One attribute value as text, as a regex sees it: numbers in Python's form (``2.5``)."""
    return str(value)


def joined_text(values: Sequence[Any]) -> str:
    """All values of an attribute as DICOM encodes them, separated by backslashes."""
    return "\\".join(value_text(v) for v in values)


def scalar_equal(expected: str | int | float, actual: Any) -> bool:
    """Whether one attribute value equals one expected value.

    A number is compared numerically (``5`` equals DS ``"5.0"``); a string is compared
    exactly, case included, with the value's text.
    """
    if isinstance(expected, str):
        return is_scalar(actual) and value_text(actual) == expected
    number = as_number(actual)
    return number is not None and number == float(expected)


def show(values: Sequence[Any] | None) -> str:
    """Attribute values for a person: ``'ORIGINAL\\PRIMARY'``, ``24``, or ``(missing)``."""
    if values is None:
        return "(missing)"
    if not values:
        return "(empty)"
    if any(isinstance(v, dict | list) for v in values):
        return f"(sequence of {len(values)} item{'s' if len(values) != 1 else ''})"
    if len(values) == 1 and as_number(values[0]) is not None and not isinstance(values[0], str):
        return value_text(values[0])
    text = joined_text(values)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 1] + "…"
    return repr(text) if "'" in text else f"'{text}'"


def show_expected(value: Any) -> str:
    """An expected value from a rule, for a person."""
    if isinstance(value, str):
        return repr(value) if "'" in value else f"'{value}'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show_expected(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
