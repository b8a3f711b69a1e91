"""C-STORE command sets encoded and read directly are pynetdicom's, byte for byte."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode

from shared.dicom.commands import c_store_rq, c_store_rsp, command_numbers


def pynetdicom_command(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The C-STORE request's command set as pynetdicom encodes it (what we sent before)."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 2
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    message.command_set.CommandDataSetType = 0x0001
    command = encode(message.command_set, True, True)
    assert command is not None
    return command


@pytest.mark.parametrize("message_id", [1, 2, 255, 256, 0x7FFF, 0xFFFF])
@pytest.mark.parametrize(
    ("sop_class_uid", "sop_instance_uid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3"),  # odd and even lengths
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.34"),
        ("1.2.840.10008.5.1.4.1.1.88.22", "1" + ".12345678" * 7),  # 64 characters
        ("1.2.840.10008.5.1.4.1.1.7", "2.25.0"),
    ],
)
def test_the_command_set_is_pynetdicoms(
    message_id: int, sop_class_uid: str, sop_instance_uid: str
) -> None:
    assert c_store_rq(message_id, sop_class_uid, sop_instance_uid) == (
        pynetdicom_command(message_id, sop_class_uid, sop_instance_uid)
    )


@pytest.mark.parametrize(
    ("message_id", "sop_instance_uid"),
    [
        (1, ""),  # pynetdicom refuses these too
        (1, "1" + ".12345678" * 8),  # 73 characters
        (1, "1.2.\ufffd"),  # a UID read from a damaged file meta
        (0, "1.2.3"),
        (0x10000, "1.2.3"),
    ],
)
def test_a_command_set_that_cannot_be_sent_is_refused(
    message_id: int, sop_instance_uid: str
) -> None:
    with pytest.raises(ValueError):
        c_store_rq(message_id, "1.2.840.10008.5.1.4.1.1.2", sop_instance_uid)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC123, 0xFFFF])
@pytest.mark.parametrize("comment", [None, "out of resources", "odd"])
def test_a_response_is_read_as_pydicom_reads_it(status: int, comment: str | None) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 0xFFFE
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"
    primitive.Status = status
    if comment is not None:
        primitive.ErrorComment = comment  # type: ignore[assignment]
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    command = encode(message.command_set, True, True)
    assert command is not None
    theirs = decode(BytesIO(command), True, True)
    numbers = command_numbers(command)
    assert numbers[0x0100] == theirs.CommandField == 0x8001
    assert numbers[0x0120] == theirs.MessageIDBeingRespondedTo == 0xFFFE
    assert numbers[0x0900] == theirs.Status == status


@pytest.mark.parametrize(
    "command",
    [
        b"\x00\x00\x00\x01\x02",  # cut inside an element header
        b"\x00\x00\x00\x09\x02\x00\x00\x00\x00",  # a value cut short
        b"\x08\x00\x00\x09\x02\x00\x00\x00\x00\x00",  # not group 0000
    ],
)
def test_a_response_that_does_not_parse_is_an_error(command: bytes) -> None:
    with pytest.raises(ValueError):
        command_numbers(command)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0x0117, 0xC000, 0xFFFF])
@pytest.mark.parametrize("message_id", [1, 256, 0xFFFF])
@pytest.mark.parametrize(
    ("sop_class_uid", "sop_instance_uid"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3"),
        ("1.2.840.10008.5.1.4.1.1.4", "1" + ".12345678" * 7),
        ("1.2.840.10008.5.1.4.1.1.7", None),  # pynetdicom leaves out what is not set
        (None, None),
    ],
)
def test_the_response_is_pynetdicoms(
    status: int, message_id: int, sop_class_uid: str | None, sop_instance_uid: str | None
) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    theirs = encode(message.command_set, True, True)
    assert c_store_rsp(message_id, status, sop_class_uid, sop_instance_uid) == theirs


def test_a_response_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ValueError):
        c_store_rsp(1, 0x10000, None, None)
    with pytest.raises(ValueError):
        c_store_rsp(1, 0, "1.2.\u00e9", None)
