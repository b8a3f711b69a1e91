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
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import _config
from pynetdicom.dimse_primitives import C_STORE

from services.receiver import statuses
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
