"""DIMSE command sets of C-STORE, encoded and read directly (PS3.7 9.3.1, E.1).

A command set is always implicit VR little endian, group 0000, its elements in tag order,
led by Command Group Length. pynetdicom builds one through a primitive, a message and
pydicom's writer (about 0.4 ms a message on the machines we measure on); the exporter
sends one C-STORE request per file and the receiver one response per instance, so both
encode these here, to the same bytes pynetdicom gives (tests compare them), and read a
response's numbers without building a pydicom Dataset.
"""

from __future__ import annotations

import struct

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
LOW_PRIORITY = 0x0002  # what pynetdicom's send_c_store sends by default
DATA_SET_PRESENT = 0x0001
NO_DATA_SET = 0x0101

# element numbers, group 0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
AFFECTED_SOP_INSTANCE_UID = 0x1000

_ELEMENT = struct.Struct("<HHI")
_US_ELEMENT = struct.Struct("<HHIH")
_UL_ELEMENT = struct.Struct("<HHII")
_US_VALUE = struct.Struct("<H")


def _uid(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")  # UnicodeEncodeError is a ValueError
    if not 0 < len(value) <= 64:
        raise ValueError(f"UID {uid!r} is not 1 to 64 characters long")
    if len(value) % 2:
        value += b"\0"  # UI values are padded to an even length with a NUL (PS3.5 6.2)
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _us(element: int, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"({element:04X}) value {value} is not an unsigned short")
    return _US_ELEMENT.pack(0x0000, element, 2, value)


def _command_set(elements: list[bytes]) -> bytes:
    body = b"".join(elements)
    return _UL_ELEMENT.pack(0x0000, 0x0000, 4, len(body)) + body


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE request with a data set, priority LOW (pynetdicom's default).

    Raises ValueError for a message ID of 0 or over 65535, or a UID that is empty, longer
    than 64 characters or not ASCII (pynetdicom refuses those too)."""
    if message_id == 0:
        raise ValueError("message ID 0 is not used")
    return _command_set(
        [
            _uid(AFFECTED_SOP_CLASS_UID, sop_class_uid),
            _us(COMMAND_FIELD, C_STORE_RQ),
            _us(MESSAGE_ID, message_id),
            _us(PRIORITY, LOW_PRIORITY),
            _us(COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
            _uid(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid),
        ]
    )


def c_store_rsp(
    message_id_being_responded_to: int,
    status: int,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
) -> bytes:
    """A C-STORE response without Offending Element or Error Comment; a UID that is None
    is left out, as pynetdicom leaves it out. Raises ValueError as :func:`c_store_rq`."""
    elements = [] if sop_class_uid is None else [_uid(AFFECTED_SOP_CLASS_UID, sop_class_uid)]
    elements += [
        _us(COMMAND_FIELD, C_STORE_RSP),
        _us(MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        _us(STATUS, status),
    ]
    if sop_instance_uid is not None:
        elements.append(_uid(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid))
    return _command_set(elements)


def command_numbers(command: bytes) -> dict[int, int]:
    """The US values of a command set, by element number: what a C-STORE response's sender
    needs (Command Field, Message ID Being Responded To, Status). Raises ValueError for a
    command set that does not parse."""
    numbers: dict[int, int] = {}
    position, end = 0, len(command)
    while position < end:
        if end - position < 8:
            raise ValueError("the command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(command, position)
        position += 8
        if group != 0x0000 or length > end - position:
            raise ValueError("the command set holds an element it cannot hold")
        if length == 2:
            numbers[element] = _US_VALUE.unpack_from(command, position)[0]
        position += length
    return numbers
