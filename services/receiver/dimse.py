"""C-STORE requests whose Affected SOP Instance UID is not a UID get 0x0117, never an abort.

pynetdicom validates every UID it decodes from a DIMSE command set. A C-STORE-RQ whose
Affected SOP Instance UID is longer than 64 characters (or otherwise not a UID) fails to
decode, and pynetdicom aborts the association; an empty one decodes to a request that
pynetdicom silently ignores, so the peer waits for a response until its own timeout. Both
end the association without A-RELEASE.

:func:`guard` changes that for one association, before its first PDU is read:

* while *that association's* P-DATA is decoded, UIDs are decoded without validation (a
  thread-local switch around pynetdicom's ``VALIDATORS["UI"]``, so every other decoder in
  the process, associations we request included, keeps validating);
* a C-STORE-RQ whose Affected SOP Instance UID is missing, empty or not a valid UID is
  answered *Invalid SOP Instance* (0x0117) at once, and its data set is dropped. The
  association goes on.

Requests with a valid UID go to pynetdicom's normal handling (``EVT_C_STORE``), with one
change of thread: a C-STORE request is served (its handler called and its response queued)
on the reactor thread that decoded its last fragment, instead of waiting for pynetdicom's
association thread, which looks for decoded messages only every millisecond or so (see
:func:`_take_store_request`). Other requests (C-ECHO, and any a peer sends while a request
is being served) stay with the association thread; one request is served at a time.

A plain C-STORE response (its status and UIDs) is encoded here, not by pynetdicom (see
:func:`_sending_store_responses_directly`).
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from services.receiver import statuses
from shared.dicom import commands
from shared.identifiers import is_valid_uid

Refused = Callable[[str], None]
"""Called with the reason when a request is answered 0x0117 here."""

_DECODING = threading.local()
_LOCK = threading.Lock()


def _lenient_ui(strict: Callable[[Any], tuple[bool, str]]) -> Callable[[Any], tuple[bool, str]]:
    def validate(value: Any) -> tuple[bool, str]:
        if getattr(_DECODING, "lenient", False):
            return True, ""
        return strict(value)

    validate.lenient_wrapper = True  # type: ignore[attr-defined]
    return validate


def _install_validator() -> None:
    with _LOCK:
        current = _config.VALIDATORS["UI"]
        if not getattr(current, "lenient_wrapper", False):
            _config.VALIDATORS["UI"] = _lenient_ui(current)


def invalid_uid_reason(value: object) -> str | None:
    """Why ``value`` cannot be an Affected SOP Instance UID; None when it can."""
    text = "" if value is None else str(value).strip("\0 ")
    if not text:
        return "Affected SOP Instance UID is missing or empty"
    if len(text) > 64:
        return f"Affected SOP Instance UID is {len(text)} characters long (at most 64)"
    if not is_valid_uid(text):
        return "Affected SOP Instance UID is not a valid UID"
    return None


def guard(assoc: Any, refused: Refused) -> None:
    """Install the guard on the acceptor ``assoc`` (from EVT_CONN_OPEN, before any PDU)."""
    _install_validator()
    dimse = assoc.dimse
    receive = dimse.receive_primitive
    serve = assoc._serve_request
    serving = threading.Lock()

    def receive_and_serve(primitive: Any) -> None:
        _DECODING.lenient = True
        try:
            receive(primitive)
        finally:
            _DECODING.lenient = False
        store = _take_store_request(dimse.msg_queue, serving)
        if store is None:
            return
        context_id, msg = store
        # pynetdicom's association thread aborts an association whose idle timer expires;
        # a store being served is not idleness (there, it never checked while serving)
        idle = getattr(assoc.dul, "_idle_timer", None)
        if idle is not None:
            idle.stop()
        try:
            _serve(msg, context_id)
        finally:
            serving.release()
            if idle is not None:
                idle.start()

    def serve_checked(msg: Any, context_id: int) -> None:
        with serving:
            _serve(msg, context_id)

    def _serve(msg: Any, context_id: int) -> None:
        if _is_store_request(msg):
            reason = invalid_uid_reason(msg._affected_sop_instance_uid)
            if reason is not None:
                refused(reason)
                _answer_invalid(dimse, msg, context_id)
                return
        serve(msg, context_id)

    dimse.receive_primitive = receive_and_serve
    assoc._serve_request = serve_checked
    dimse.send_msg = _sending_store_responses_directly(assoc, dimse.send_msg)


def _sending_store_responses_directly(
    assoc: Any, send: Callable[[Any, int], None]
) -> Callable[[Any, int], None]:
    """``dimse.send_msg`` with a C-STORE response's command set encoded directly
    (:func:`shared.dicom.commands.c_store_rsp`, the bytes pynetdicom encodes) and queued
    to the DUL as the one P-DATA-TF pynetdicom would queue: its primitive, message and
    pydicom's writer were a tenth of the receiver's CPU time per instance. Anything else
    (another message, a response with an Error Comment or Offending Element, one that does
    not fit the peer's PDU, or an association with handlers watching sent messages) goes
    through pynetdicom as before."""

    def send_msg(primitive: Any, context_id: int) -> None:
        command = _plain_store_response(primitive)
        limit = assoc.dimse.maximum_pdu_size
        if (
            command is None
            or (limit and len(command) + 6 > limit)
            or assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            send(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        assoc.dul.send_pdu(pdata)

    return send_msg


def _plain_store_response(primitive: Any) -> bytes | None:
    """The command set of a C-STORE response with nothing but its status and UIDs, else
    None."""
    if (
        not isinstance(primitive, C_STORE)
        or primitive.MessageIDBeingRespondedTo is None
        or primitive.Status is None
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or primitive.DataSet is not None
    ):
        return None
    sop_class = primitive.AffectedSOPClassUID
    sop_instance = primitive.AffectedSOPInstanceUID
    try:
        return commands.c_store_rsp(
            primitive.MessageIDBeingRespondedTo,
            primitive.Status,
            None if sop_class is None else str(sop_class),
            None if sop_instance is None else str(sop_instance),
        )
    except ValueError:  # pynetdicom encodes it, or says why it cannot
        return None


def _is_store_request(msg: Any) -> bool:
    return isinstance(msg, C_STORE) and msg.MessageIDBeingRespondedTo is None


def _take_store_request(messages: queue.Queue[Any], serving: threading.Lock) -> Any | None:
    """The C-STORE request just decoded, taken off the DIMSE queue to be served on the
    thread that read it, with ``serving`` held; None to leave the queue to pynetdicom's
    association thread (no C-STORE request first in line, or that thread is serving).

    pynetdicom's association thread polls that queue with a sleep of 1 ms between looks,
    and under load it slept 3.7 ms per instance received (py-spy, 300 instances); the
    thread that decoded the request serves it at once. The peer waits for the response
    before it sends more, so that thread has nothing else to read meanwhile; responses go
    out in order because one request at a time is served (``serving``)."""
    with messages.mutex:
        if not messages.queue or not _is_store_request(messages.queue[0][1]):
            return None
        if not serving.acquire(blocking=False):
            return None
        return messages.queue.popleft()


def _answer_invalid(dimse: Any, request: Any, context_id: int) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.MessageID
    _DECODING.lenient = True  # the request's SOP Class UID may be malformed too
    try:
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
    finally:
        _DECODING.lenient = False
    response.Status = statuses.INVALID_SOP_INSTANCE
    dimse.send_msg(response, context_id)
