"""Reading a stored file's Part 10 header from its first bytes (services.exporter.meta)."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import split_dataset

from services.exporter.meta import FileMeta, NotPart10Error, parse_file_meta
from shared.samples import write_ct_series


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    group, number = 0x0002, tag
    if vr in (b"OB", b"UN"):
        return (
            struct.pack("<HH", group, number) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        )
    return struct.pack("<HH", group, number) + vr + struct.pack("<H", len(value)) + value


def part10(*elements: bytes, group_length: bool = True, body: bytes = b"") -> bytes:
    meta = b"".join(elements)
    if group_length:
        meta = element(0x0000, b"UL", struct.pack("<I", len(meta))) + meta
    return b"\0" * 128 + b"DICM" + meta + body


CT = b"1.2.840.10008.5.1.4.1.1.2\0"
INSTANCE = b"1.2.3.4.5"
SYNTAX = b"1.2.840.10008.1.2.4.90"
BODY = struct.pack("<HH", 0x0008, 0x0016) + b"UI" + struct.pack("<H", 2) + b"1\0"


def test_reads_the_uids_and_where_the_data_set_starts() -> None:
    data = part10(
        element(0x0001, b"OB", b"\0\1"),
        element(0x0002, b"UI", CT),
        element(0x0003, b"UI", INSTANCE + b"\0"),
        element(0x0010, b"UI", SYNTAX),
        element(0x0012, b"UI", b"1.2.3\0"),
        body=BODY,
    )
    meta = parse_file_meta(data)
    assert meta == FileMeta(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4.5",
        transfer_syntax_uid=str(JPEG2000Lossless),
        dataset_offset=len(data) - len(BODY),
    )


def test_without_group_length_the_meta_ends_at_the_first_other_group() -> None:
    data = part10(
        element(0x0002, b"UI", CT),
        element(0x0003, b"UI", INSTANCE + b"\0"),
        element(0x0010, b"UI", SYNTAX),
        group_length=False,
        body=BODY,
    )
    meta = parse_file_meta(data)
    assert isinstance(meta, FileMeta)
    assert meta.dataset_offset == len(data) - len(BODY)


def test_a_short_head_asks_for_more_bytes_until_the_meta_is_complete() -> None:
    data = part10(
        element(0x0002, b"UI", CT),
        element(0x0003, b"UI", INSTANCE + b"\0"),
        element(0x0010, b"UI", SYNTAX),
        body=BODY,
    )
    length = 10
    while True:
        result = parse_file_meta(data[:length], complete=length >= len(data))
        if isinstance(result, FileMeta):
            break
        assert result > length
        length = result
    assert result.transfer_syntax_uid == str(JPEG2000Lossless)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than a DICOM file header"),
        (b"x" * 200, "no DICM prefix"),
        (part10(element(0x0002, b"UI", CT), element(0x0003, b"UI", INSTANCE)), "TransferSyntaxUID"),
        (
            part10(element(0x0010, b"UI", SYNTAX), element(0x0003, b"UI", INSTANCE)),
            "MediaStorageSOPClassUID",
        ),
        (
            b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 2) + b"\x01\x02" + b"\0" * 10,
            "explicit VR",
        ),
        (part10(element(0x0002, b"UI", CT))[:-4], "truncated"),
    ],
)
def test_what_is_not_a_part10_file_says_why(data: bytes, message: str) -> None:
    with pytest.raises(NotPart10Error, match=message):
        parse_file_meta(data, complete=True)


def test_agrees_with_pydicom_on_generated_files(tmp_path: Path) -> None:
    for path in write_ct_series(tmp_path, slices=2, size=8):
        data = path.read_bytes()
        meta = parse_file_meta(data[:4096])
        assert isinstance(meta, FileMeta)
        dataset = pydicom.dcmread(path)
        assert meta.sop_class_uid == dataset.file_meta.MediaStorageSOPClassUID
        assert meta.sop_instance_uid == dataset.SOPInstanceUID
        assert meta.transfer_syntax_uid == ExplicitVRLittleEndian
        assert meta.dataset_offset == split_dataset(path)[1]
