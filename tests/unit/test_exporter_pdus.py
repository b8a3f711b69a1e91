"""The exporter's one-buffer C-STORE PDUs are byte for byte what pynetdicom would send, and
the responses it reads itself are read whatever PDUs they come in."""

from __future__ import annotations

import socket
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from services.exporter.association import (
    LostAssociationError,
    p_data_tf_pdus,
    read_command,
)


def pynetdicom_bytes(message: C_STORE_RQ | C_STORE_RSP, context_id: int, max_pdu: int) -> bytes:
    out = b""
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


@pytest.mark.parametrize("max_pdu", [0, 16384, 16390, 4096, 131072])
@pytest.mark.parametrize("length", [0, 1, 16378, 16379, 40000])
def test_the_pdus_match_pynetdicoms(tmp_path: Path, max_pdu: int, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    path = tmp_path / "data"
    path.write_bytes(b"HEAD" + data)
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"
    primitive.Priority = 2
    primitive._dataset_path = (path, 4)
    ours = C_STORE_RQ()
    ours.primitive_to_message(primitive)
    command = encode(ours.command_set, True, True)
    assert command is not None
    theirs = C_STORE_RQ()
    theirs.primitive_to_message(primitive)
    assert p_data_tf_pdus(3, command, data, max_pdu) == pynetdicom_bytes(theirs, 3, max_pdu)


def test_a_data_set_in_memory_is_cut_the_same_way() -> None:
    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3"
    primitive.Priority = 2
    data = b"\x01\x02" * 20000
    primitive.DataSet = BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    command = encode(message.command_set, True, True)
    assert command is not None
    assert p_data_tf_pdus(1, command, data, 16384) == pynetdicom_bytes(message, 1, 16384)


def response_pdus(message_id: int, status: int, max_pdu: int) -> bytes:
    """A C-STORE response as pynetdicom's SCP sends it, cut to ``max_pdu``."""
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return pynetdicom_bytes(message, 5, max_pdu)


@pytest.mark.parametrize("max_pdu", [0, 16384, 40])
def test_a_response_is_read_from_the_socket_whatever_its_pdus(max_pdu: int) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(response_pdus(7, 0xB000, max_pdu) + response_pdus(8, 0x0000, max_pdu))
        first = decode(BytesIO(read_command(ours)), True, True)
        second = decode(BytesIO(read_command(ours)), True, True)
    assert (first.CommandField, first.MessageIDBeingRespondedTo, first.Status) == (
        0x8001,
        7,
        0xB000,
    )
    assert (second.MessageIDBeingRespondedTo, second.Status) == (8, 0x0000)


@pytest.mark.parametrize(
    "sent",
    [
        bytes.fromhex("0700000000040000 0201".replace(" ", "")),  # A-ABORT
        bytes.fromhex("05000000000400000000"),  # A-RELEASE-RQ
        b"\x04\x00\x00\x00\x01\x00",  # a P-DATA-TF cut short, then the connection closes
        b"",  # the connection closes
    ],
)
def test_anything_but_a_response_ends_the_association(sent: bytes) -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(sent)
        theirs.close()
        with pytest.raises(LostAssociationError):
            read_command(ours)
