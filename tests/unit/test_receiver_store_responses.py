"""The receiver queues a C-STORE response as the P-DATA-TF pynetdicom would queue, built
directly; anything it does not build itself still goes through pynetdicom."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from services.receiver.dimse import _sending_store_responses_directly


class _Dul:
    def __init__(self) -> None:
        self.sent: list[P_DATA] = []

    def send_pdu(self, primitive: P_DATA) -> None:
        self.sent.append(primitive)


class _Dimse:
    maximum_pdu_size = 16384


class _Association:
    def __init__(self, watched: bool = False) -> None:
        self.dul = _Dul()
        self.dimse = _Dimse()
        self.watched = watched

    def get_handlers(self, event: Any) -> list[Any]:
        assert event is evt.EVT_DIMSE_SENT
        return [(print, None)] if self.watched else []


def _pynetdicoms(primitive: C_STORE, context_id: int, max_pdu: int) -> list[list[Any]]:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return [p.presentation_data_value_list for p in message.encode_msg(context_id, max_pdu)]


def _response(status: int, instance: str | None = "1.2.3.4.5") -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    primitive.AffectedSOPInstanceUID = instance
    primitive.Status = status
    return primitive


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0x0117, 0xC211])
@pytest.mark.parametrize("instance", ["1.2.3.4.5", "1.2.34", None])
def test_a_store_response_is_queued_as_pynetdicom_queues_it(
    status: int, instance: str | None
) -> None:
    assoc = _Association()
    through_pynetdicom: list[Any] = []
    send = _sending_store_responses_directly(assoc, lambda p, c: through_pynetdicom.append((p, c)))
    send(_response(status, instance), 3)
    assert through_pynetdicom == []
    assert [p.presentation_data_value_list for p in assoc.dul.sent] == _pynetdicoms(
        _response(status, instance), 3, 16384
    )


def test_what_it_does_not_build_itself_goes_through_pynetdicom() -> None:
    with_comment = _response(0xC000)
    with_comment.ErrorComment = "cannot store"  # type: ignore[assignment]
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    request.AffectedSOPInstanceUID = "1.2.3"
    for assoc, primitive in [
        (_Association(), with_comment),
        (_Association(), echo),
        (_Association(), request),
        (_Association(watched=True), _response(0)),  # EVT_DIMSE_SENT handlers see it
    ]:
        through_pynetdicom: list[Any] = []

        def pynetdicom_send(p: Any, c: int, seen: list[Any] = through_pynetdicom) -> None:
            seen.append((p, c))

        send = _sending_store_responses_directly(assoc, pynetdicom_send)
        send(primitive, 5)
        assert through_pynetdicom == [(primitive, 5)]
        assert assoc.dul.sent == []


def test_a_response_longer_than_the_peers_pdu_goes_through_pynetdicom() -> None:
    assoc = _Association()
    assoc.dimse.maximum_pdu_size = 40  # fewer bytes than the command
    through_pynetdicom: list[Any] = []
    send = _sending_store_responses_directly(assoc, lambda p, c: through_pynetdicom.append((p, c)))
    send(_response(0), 1)
    assert len(through_pynetdicom) == 1 and assoc.dul.sent == []
