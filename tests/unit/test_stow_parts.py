"""STOW-RS request parsing and response building (services/receiver/stow_parts.py)."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.receiver import statuses
from services.receiver.stow_parts import (
    Outcome,
    Part,
    PartError,
    RequestError,
    boundary_of,
    http_status,
    read_instance,
    response,
    split_parts,
)


def dicom_file() -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


@pytest.mark.parametrize(
    ("header", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', "abc"),
        ('Multipart/Related; boundary="a;b c"; type=application/dicom', "a;b c"),
        ("multipart/related; boundary=xyz", "xyz"),
    ],
)
def test_boundary_of_a_stow_content_type(header: str, boundary: str) -> None:
    assert boundary_of(header) == boundary


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 415),
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=a', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_other_content_types_are_refused_with_their_status(header: str | None, status: int) -> None:
    with pytest.raises(RequestError) as error:
        boundary_of(header)
    assert error.value.status == status


def test_split_parts_keeps_binary_content_and_headers() -> None:
    body = (
        b"preamble\r\n--b\r\nContent-Type: application/dicom\r\n\r\n\r\n--x\r\x00\xff\r\n"
        b"--b\r\n\r\nsecond\r\n--b--\r\nepilogue"
    )
    first, second = split_parts(body, "b")
    assert first.headers == {"content-type": "application/dicom"}
    assert first.content == b"\r\n--x\r\x00\xff"
    assert second.headers == {} and second.content == b"second"


@pytest.mark.parametrize(
    "body",
    [b"no boundary at all", b"--b\r\nContent-Type: application/dicom\r\n\r\ncut off", b"--b"],
)
def test_malformed_bodies_are_a_400(body: bytes) -> None:
    with pytest.raises(RequestError) as error:
        split_parts(body, "b")
    assert error.value.status == 400


def test_read_instance_gives_the_meta_uids_and_the_data_set_bytes() -> None:
    data, ds = dicom_file()
    instance = read_instance(Part({"content-type": "application/dicom"}, data))
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.sop_class_uid == ds.SOPClassUID
    assert instance.transfer_syntax_uid == ExplicitVRLittleEndian
    assert data.endswith(instance.data_set) and instance.data_set.startswith(b"\x08\x00\x16\x00")


@pytest.mark.parametrize(
    "part",
    [
        Part({"content-type": "text/plain"}, b"\0" * 128 + b"DICM"),
        Part({}, b"not DICOM"),
        Part({}, b"\0" * 128 + b"DICM" + b"\x02\x00\x00"),
    ],
)
def test_parts_that_are_not_dicom_files_are_part_errors(part: Part) -> None:
    with pytest.raises(PartError):
        read_instance(part)


def test_response_lists_stored_and_failed_instances_with_their_reason() -> None:
    outcomes = [
        Outcome("1.2", "1.2.3", statuses.SUCCESS),
        Outcome("", "", statuses.CANNOT_UNDERSTAND, "not DICOM"),
    ]
    assert response(outcomes) == {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI"},
                    "00081155": {"vr": "UI"},
                    "00081197": {"vr": "US", "Value": [0xC000]},
                }
            ],
        },
        "00081199": {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": {"vr": "UI", "Value": ["1.2"]},
                    "00081155": {"vr": "UI", "Value": ["1.2.3"]},
                }
            ],
        },
    }
    assert http_status(outcomes) == 202
    assert http_status(outcomes[:1]) == 200
    assert http_status(outcomes[1:]) == 409
