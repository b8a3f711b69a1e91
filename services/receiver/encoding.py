"""Is a received data set well formed? Every element is framed, nothing is cut off.

pydicom reads leniently: a data set cut off in the middle reads "successfully" with fewer
elements, and a value shorter than its length is accepted. Before the receiver answers
success it walks the whole encoding instead, in the transfer syntax of the presentation
context (PS3.5 7.1 to 7.5, A.4 for encapsulated pixel data, A.5 for deflate):

* every element header (tag, VR in explicit VR, length) is complete;
* every value fits in what was received;
* an undefined length is allowed only for a sequence, an item, or encapsulated pixel
  data, and each of those ends with its delimiter;
* elements of the top-level data set come in ascending tag order.

Only element headers are read; values are skipped, and pixel data is never decoded. The
top-level values of the four identifying UIDs are returned on the way.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from dataclasses import dataclass, field

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
_DEFLATED = {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.100.1"}

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

# Tags whose top-level values identify the instance.
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
IDENTIFYING = {SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID}

# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"}
_LONG_VRS |= {b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO"}
_SHORT_VRS |= {b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_MAX_DEPTH = 32
_MAX_INFLATED = 1 << 30


class EncodingError(Exception):
    """The data set is not well formed; the message says what and where (byte offset)."""


@dataclass
class _Walk:
    data: bytes | memoryview
    little: bool
    implicit: bool
    found: dict[int, str] = field(default_factory=dict)

    def u16(self, offset: int) -> int:
        return int(struct.unpack_from("<H" if self.little else ">H", self.data, offset)[0])

    def u32(self, offset: int) -> int:
        return int(struct.unpack_from("<I" if self.little else ">I", self.data, offset)[0])

    def tag(self, offset: int) -> int:
        return (self.u16(offset) << 16) | self.u16(offset + 2)


def check_encoding(data: bytes | memoryview, transfer_syntax_uid: str) -> dict[int, str]:
    """Walk the data set ``data``; its top-level identifying UIDs (stripped), by tag.

    Raises :class:`EncodingError` when the data set is not well formed.
    """
    if not data:
        raise EncodingError("the data set is empty")
    if transfer_syntax_uid in _DEFLATED:
        data = _inflate(data)
    walk = _Walk(
        data,
        little=transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN,
        implicit=transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN,
    )
    _data_set(walk, 0, len(data), depth=0)
    return walk.found


def _inflate(data: bytes | memoryview) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, _MAX_INFLATED)
    except zlib.error as exc:
        raise EncodingError(f"deflated data set cannot be inflated ({exc})") from exc
    if inflater.unconsumed_tail:
        raise EncodingError("deflated data set inflates to more than 1 GiB")
    if not inflater.eof:
        raise EncodingError("deflated data set is cut off")
    return inflated


def _data_set(walk: _Walk, offset: int, end: int, depth: int) -> int:
    """Walk elements from ``offset`` to ``end`` (to an item delimiter when ``end`` is
    UNDEFINED); the offset after the data set."""
    if depth > _MAX_DEPTH:
        raise EncodingError(f"sequences nested deeper than {_MAX_DEPTH} at byte {offset}")
    previous = -1
    while offset < end:
        if end == UNDEFINED and offset + 8 <= len(walk.data) and walk.tag(offset) == ITEM_DELIMITER:
            return offset + 8
        tag, vr, length, value_at = _header(walk, offset)
        if depth == 0:
            if tag <= previous:
                raise EncodingError(f"element {_hex(tag)} out of order at byte {offset}")
            previous = tag
        if length == UNDEFINED:
            if tag == PIXEL_DATA and vr in (b"OB", b"OW", b"UN", None):
                offset = _fragments(walk, value_at)
            elif vr in (b"SQ", b"UN", None):
                offset = _items(walk, value_at, UNDEFINED, depth)
            else:
                raise EncodingError(f"element {_hex(tag)} has an undefined length at byte {offset}")
            continue
        value_end = value_at + length
        if value_end > len(walk.data) or (end != UNDEFINED and value_end > end):
            raise EncodingError(
                f"element {_hex(tag)} at byte {offset} announces {length} bytes; "
                f"the data set is cut off"
            )
        if vr == b"SQ":
            _items(walk, value_at, value_end, depth)
        elif vr is None and _looks_like_sequence(walk, value_at, length):
            # If it is not a sequence after all, it is an opaque value that fits its length.
            with contextlib.suppress(EncodingError):
                _items(walk, value_at, value_end, depth)
        elif depth == 0 and tag in IDENTIFYING:
            value = bytes(walk.data[value_at:value_end])
            walk.found[tag] = value.decode("ascii", "replace").strip("\0 ")
        offset = value_end
    if end == UNDEFINED:
        raise EncodingError("an item of undefined length has no item delimiter")
    return offset


def _header(walk: _Walk, offset: int) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None in implicit VR, length, offset of the value)."""
    data = walk.data
    if offset + 8 > len(data):
        raise EncodingError(f"element header cut off at byte {offset}")
    tag = walk.tag(offset)
    if walk.implicit or (tag >> 16) == 0xFFFE:
        return tag, None, walk.u32(offset + 4), offset + 8
    vr = bytes(data[offset + 4 : offset + 6])
    if vr in _LONG_VRS:
        if offset + 12 > len(data):
            raise EncodingError(f"element header cut off at byte {offset}")
        return tag, vr, walk.u32(offset + 8), offset + 12
    if vr in _SHORT_VRS:
        return tag, vr, walk.u16(offset + 6), offset + 8
    raise EncodingError(f"element {_hex(tag)} at byte {offset} has no valid VR ({vr!r})")


def _items(walk: _Walk, offset: int, end: int, depth: int) -> int:
    """A sequence's items from ``offset``; the offset after the sequence."""
    while end == UNDEFINED or offset < end:
        if offset + 8 > len(walk.data):
            raise EncodingError(f"sequence cut off at byte {offset}")
        tag = walk.tag(offset)
        length = walk.u32(offset + 4)
        if tag == SEQUENCE_DELIMITER:
            if end != UNDEFINED:
                raise EncodingError(f"unexpected sequence delimiter at byte {offset}")
            return offset + 8
        if tag != ITEM:
            raise EncodingError(f"expected an item at byte {offset}, found {_hex(tag)}")
        start = offset + 8
        if length == UNDEFINED:
            offset = _data_set(walk, start, UNDEFINED, depth + 1)
        else:
            if start + length > len(walk.data) or (end != UNDEFINED and start + length > end):
                raise EncodingError(f"item at byte {offset} is cut off")
            _data_set(walk, start, start + length, depth + 1)
            offset = start + length
    if offset != end:
        raise EncodingError(f"sequence items overrun their sequence at byte {offset}")
    return offset


def _fragments(walk: _Walk, offset: int) -> int:
    """Encapsulated pixel data: items of defined length up to the sequence delimiter."""
    while True:
        if offset + 8 > len(walk.data):
            raise EncodingError(f"encapsulated pixel data cut off at byte {offset}")
        tag = walk.tag(offset)
        length = walk.u32(offset + 4)
        if tag == SEQUENCE_DELIMITER:
            return offset + 8
        if tag != ITEM or length == UNDEFINED:
            raise EncodingError(f"bad pixel data fragment at byte {offset}")
        offset += 8 + length
        if offset > len(walk.data):
            raise EncodingError("encapsulated pixel data is cut off")


def _looks_like_sequence(walk: _Walk, offset: int, length: int) -> bool:
    """In implicit VR a defined-length sequence is only known by its first item tag."""
    return length >= 8 and walk.tag(offset) in (ITEM, SEQUENCE_DELIMITER)


def _hex(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
