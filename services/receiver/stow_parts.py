"""STOW-RS request bodies and responses (PS3.18 10.5), pure functions.

* :func:`boundary_of` reads the ``multipart/related; type="application/dicom";
  boundary=...`` Content-Type (RFC 2387); anything else is a :class:`RequestError` with the
  HTTP status to answer (400 or 415).
* :func:`split_parts` splits the body into its parts (RFC 2046 5.1.1).
* :func:`read_instance` reads a part that holds a DICOM file (PS3.10): its File Meta
  Information (SOP Class, SOP Instance, Transfer Syntax UIDs) and the data set bytes after
  it, untouched. Anything else is a :class:`PartError`.
* :func:`response` is the DICOM JSON (PS3.18 F.2) Store Instances response:
  ReferencedSOPSequence for stored instances, FailedSOPSequence with FailureReason for the
  others; :func:`http_status` its HTTP status.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pydicom.filereader import _read_file_meta_info, read_preamble

from services.receiver import statuses

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


class RequestError(Exception):
    """The request as a whole cannot be taken; ``status`` is the HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class PartError(Exception):
    """One part is not a DICOM file; it fails with ``Cannot understand`` (0xC000)."""


@dataclass(frozen=True)
class Part:
    headers: dict[str, str]
    """Header names in lower case."""
    content: bytes

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", DICOM).split(";")[0].strip().lower()


@dataclass(frozen=True)
class Instance:
    """A DICOM file of a part: what its File Meta Information says, and its data set."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data_set: bytes


@dataclass(frozen=True)
class Outcome:
    """What became of one part: ``status`` is the C-STORE status (0 stored)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status == statuses.SUCCESS


def _parameters(header: str) -> tuple[str, dict[str, str]]:
    """A Content-Type's media type (lower case) and parameters (names in lower case)."""
    media_type, _, rest = header.partition(";")
    parameters: dict[str, str] = {}
    while rest:
        item, rest = _next_parameter(rest)
        name, equals, value = item.partition("=")
        if equals:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            parameters[name.strip().lower()] = value
    return media_type.strip().lower(), parameters


def _next_parameter(text: str) -> tuple[str, str]:
    """The text up to the next ``;`` outside quotes, and the rest."""
    quoted = False
    for position, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            return text[:position], text[position + 1 :]
    return text, ""


def boundary_of(content_type: str | None) -> str:
    """The boundary of a STOW-RS request's Content-Type; RequestError otherwise."""
    if not content_type:
        raise RequestError(415, 'Content-Type must be multipart/related; type="application/dicom"')
    media_type, parameters = _parameters(content_type)
    if media_type != "multipart/related":
        raise RequestError(
            415, f"Content-Type {media_type!r} is not multipart/related (PS3.18 10.5.1)"
        )
    kind = parameters.get("type", DICOM).lower()
    if kind != DICOM:
        raise RequestError(
            415, f"multipart/related type {kind!r} is not supported; only application/dicom"
        )
    boundary = parameters.get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise RequestError(400, "multipart/related needs a boundary parameter (1 to 70 chars)")
    return boundary


def split_parts(body: bytes, boundary: str) -> list[Part]:
    """The parts of a multipart body; RequestError (400) when it is not one."""
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise RequestError(400, "multipart body has no boundary line")
        position += 2
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body[position : position + 2] == b"--":
            return parts
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise RequestError(400, "multipart boundary line is malformed")
        start = line_end + 2
        following = body.find(b"\r\n" + delimiter, start)
        if following < 0:
            raise RequestError(400, "multipart body is cut off (no closing boundary)")
        parts.append(_part(body[start:following], len(parts) + 1))
        position = following + 2


def _part(raw: bytes, number: int) -> Part:
    if raw.startswith(b"\r\n"):
        return Part({}, raw[2:])
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise RequestError(400, f"part {number} has no end of headers")
    headers: dict[str, str] = {}
    for line in raw[:end].decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise RequestError(400, f"part {number} has a malformed header line")
        headers[name.strip().lower()] = value.strip()
    return Part(headers, raw[end + 4 :])


def read_instance(part: Part) -> Instance:
    """The DICOM file in ``part``; PartError when it is not one."""
    if part.media_type != DICOM:
        raise PartError(f"part is {part.media_type!r}, not application/dicom")
    if part.content[128:132] != b"DICM":
        raise PartError("part is not a DICOM file (PS3.10): no 'DICM' after the preamble")
    stream = io.BytesIO(part.content)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception as exc:
        raise PartError(f"part is not a DICOM file (PS3.10): {exc}") from exc
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")).strip("\0 ")
    if not transfer_syntax:
        raise PartError("the DICOM file's meta information has no Transfer Syntax UID")
    return Instance(
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")).strip("\0 "),
        sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "")).strip("\0 "),
        transfer_syntax_uid=transfer_syntax,
        data_set=part.content[stream.tell() :],
    )


def _uids(outcome: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class_uid:
        item[REFERENCED_SOP_CLASS_UID] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
    else:
        item[REFERENCED_SOP_CLASS_UID] = {"vr": "UI"}
    if outcome.sop_instance_uid:
        item[REFERENCED_SOP_INSTANCE_UID] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
    else:
        item[REFERENCED_SOP_INSTANCE_UID] = {"vr": "UI"}
    return item


def response(outcomes: list[Outcome]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) in DICOM JSON."""
    stored = [_uids(o) for o in outcomes if o.stored]
    failed = [
        {**_uids(o), FAILURE_REASON: {"vr": "US", "Value": [o.status]}}
        for o in outcomes
        if not o.stored
    ]
    body: dict[str, Any] = {}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    return body


def http_status(outcomes: list[Outcome]) -> int:
    """200 every instance stored, 202 some, 409 none (PS3.18 10.5.3)."""
    stored = sum(o.stored for o in outcomes)
    if outcomes and stored == len(outcomes):
        return 200
    return 202 if stored else 409
