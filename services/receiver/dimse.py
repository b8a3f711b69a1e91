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

Requests with a valid UID go to pynetdicom's normal handling (``EVT_C_STORE``).
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

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

    def receive_leniently(primitive: Any) -> None:
        _DECODING.lenient = True
        try:
            receive(primitive)
        finally:
            _DECODING.lenient = False

    def serve_checked(msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and msg.MessageIDBeingRespondedTo is None:
            reason = invalid_uid_reason(msg._affected_sop_instance_uid)
            if reason is not None:
                refused(reason)
                _answer_invalid(dimse, msg, context_id)
                return
        serve(msg, context_id)

    dimse.receive_primitive = receive_leniently
    assoc._serve_request = serve_checked


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
