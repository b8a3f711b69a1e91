"""An element still encoded, in the JSON Model directly: for the VRs where that is plain.

A file's instance-level attributes (what differs from file to file: UIDs, positions,
numbers, times) are converted to the JSON Model once per file. Through pydicom, each goes
from its bytes to a ``DataElement`` (the raw-element hooks, the value converter, a value
class such as ``DSfloat``, validation) and then to its JSON form: about a fifth of the time
of a folder of real series. For numbers, UIDs and binary values the JSON form follows from
the bytes alone, so :func:`json_from_raw` builds it from them.

It is pydicom's result or nothing: a value it is not sure to read exactly as pydicom does
(any character outside a strict pattern, an empty value between backslashes, a length
that is not a whole number of values, pydicom configured otherwise than by default, the
LUT descriptors pydicom corrects) gives :data:`NOT_PLAIN`, and the caller asks pydicom.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any, Final

from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.hooks import hooks, raw_element_value, raw_element_vr

NOT_PLAIN: Final = object()
"""Returned when pydicom must convert the element (see the module's description)."""

_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_NUMBER_SIZES = {vr: struct.calcsize(f"<{code}") for vr, code in _NUMBER_FORMATS.items()}
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_DECIMAL = re.compile(r" *[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
_INTEGER = re.compile(r" *[+-]?[0-9]+ *")
_UID = re.compile(r"[0-9.]+")
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
PLAIN_VRS = frozenset({"DS", "IS", "UI", *_NUMBER_FORMATS, *_BYTES_VRS})
"""The VRs :func:`json_from_raw` converts itself."""


def pydicom_reads_by_default() -> bool:
    """Whether pydicom converts raw elements as it does by default (no callback or hook
    replaced, no numpy or Decimal values): :func:`json_from_raw` gives its result then."""
    config = pydicom_config
    return (
        config.data_element_callback is None
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.use_DS_decimal
        and hooks.raw_element_value is raw_element_value
        and hooks.raw_element_vr is raw_element_vr
    )


def json_from_raw(raw: RawDataElement, max_inline_binary: int) -> dict[str, Any] | object:
    """What ``DataElement.to_json_dict`` gives for the element once pydicom has read it
    (binary values over ``max_inline_binary`` bytes: None), or :data:`NOT_PLAIN`.

    Only for an explicit VR little endian element whose value was read (not deferred), when
    :func:`pydicom_reads_by_default`.
    """
    vr, value = raw.VR, raw.value
    if value is None or raw.is_implicit_VR or not raw.is_little_endian or vr not in PLAIN_VRS:
        return NOT_PLAIN
    if vr in _BYTES_VRS:
        if len(value) > max_inline_binary:
            return None
        if not value:
            return {"vr": vr}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if not value:
        return {"vr": vr}
    size = _NUMBER_SIZES.get(vr)
    if size is not None:
        if len(value) % size or raw.tag in _LUT_DESCRIPTORS:
            return NOT_PLAIN
        format_ = f"<{len(value) // size}{_NUMBER_FORMATS[vr]}"
        return {"vr": vr, "Value": list(struct.unpack(format_, value))}
    text = value.decode("latin-1")
    if vr == "DS":
        parts = text.strip().rstrip(" \x00").split("\\")
        if not all(_DECIMAL.fullmatch(part) for part in parts):
            return NOT_PLAIN
        return {"vr": vr, "Value": [float(part) for part in parts]}
    if vr == "IS":
        parts = text.rstrip(" \x00").split("\\")
        if not all(_INTEGER.fullmatch(part) for part in parts):
            return NOT_PLAIN
        return {"vr": vr, "Value": [int(part) for part in parts]}
    parts = text.rstrip("\x00 ").split("\\")  # UI
    if not all(_UID.fullmatch(part) for part in parts):
        return NOT_PLAIN
    return {"vr": vr, "Value": parts}
