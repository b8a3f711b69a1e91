"""The DICOM Part 10 header of a stored instance, read from its first bytes.

An association's presentation contexts must be known before it is requested, so the
exporter reads the SOP class and transfer syntax of every file first. Only the head of each
object is fetched (:data:`HEAD_BYTES`, more when the File Meta Information is longer), and
parsed here without pydicom: preamble, ``DICM`` prefix, then group 0002 elements, which are
always explicit VR little endian (PS3.10 7.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEAD_BYTES = 4096
_PREFIX_END = 132  # 128-byte preamble + b"DICM"
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR"} | {b"UT", b"SV", b"UV"}
)
_WANTED = {0x0002: "sop_class_uid", 0x0003: "sop_instance_uid", 0x0010: "transfer_syntax_uid"}


class NotPart10Error(ValueError):
    """The bytes are not a DICOM Part 10 file the exporter can send."""


@dataclass(frozen=True)
class FileMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


def parse_file_meta(head: bytes, complete: bool = False) -> FileMeta | int:
    """The File Meta Information in ``head``, the first bytes of a file.

    Returns the number of bytes needed when ``head`` stops inside it (unless ``complete``
    says there are no more). Raises :class:`NotPart10Error` when it is not a Part 10 file.
    """
    size = len(head)
    if size < _PREFIX_END:
        if complete:
            raise NotPart10Error("shorter than a DICOM file header")
        return _PREFIX_END + 256
    if head[128:132] != b"DICM":
        raise NotPart10Error("no DICM prefix: not a DICOM Part 10 file")
    values: dict[str, str] = {}
    position = _PREFIX_END
    meta_end: int | None = None
    while True:
        if meta_end is not None and position >= meta_end:
            break
        if position + 8 > size:
            if complete:
                break
            return int(max(position + 8, meta_end or 0, size * 2))
        group, element = struct.unpack_from("<HH", head, position)
        if group != 0x0002:
            break
        vr = head[position + 4 : position + 6]
        if not (vr.isalpha() and vr.isupper()):
            raise NotPart10Error("the File Meta Information is not explicit VR little endian")
        if vr in _LONG_VRS:
            if position + 12 > size:
                if complete:
                    raise NotPart10Error("the File Meta Information is truncated")
                return max(position + 12, size * 2)
            (length,) = struct.unpack_from("<I", head, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", head, position + 6)
            start = position + 8
        if length == 0xFFFFFFFF:
            raise NotPart10Error("the File Meta Information has an undefined length")
        end = start + length
        if end > size:
            if complete:
                raise NotPart10Error("the File Meta Information is truncated")
            return int(max(end, meta_end or 0, size * 2))
        if element == 0x0000 and length == 4:
            (group_length,) = struct.unpack_from("<I", head, start)
            meta_end = end + group_length
        elif element in _WANTED:
            values[_WANTED[element]] = head[start:end].decode("ascii", "replace").strip("\0 ")
        position = end
    for field, name in (
        ("transfer_syntax_uid", "TransferSyntaxUID"),
        ("sop_class_uid", "MediaStorageSOPClassUID"),
        ("sop_instance_uid", "MediaStorageSOPInstanceUID"),
    ):
        if not values.get(field):
            raise NotPart10Error(f"the File Meta Information has no {name}")
    return FileMeta(
        sop_class_uid=values["sop_class_uid"],
        sop_instance_uid=values["sop_instance_uid"],
        transfer_syntax_uid=values["transfer_syntax_uid"],
        dataset_offset=position,
    )
