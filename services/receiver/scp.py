"""The pynetdicom Application Entity: one listening port for all of our AE titles.

* Storage: pynetdicom's unrestricted storage service (``_config.UNRESTRICTED_STORAGE_SERVICE``)
  accepts every storage SOP Class, private and unknown ones included, with the first
  transfer syntax the peer proposes for it; instances are stored in it, never converted.
  The setting is process-wide and only concerns association acceptors.
* Verification: a Verification context when ``verification.enabled`` (its
  ``transfer-syntaxes``, else pynetdicom's defaults); none when disabled, so C-ECHO is
  refused at negotiation.
* ``max-associations`` and ``max-pdu-size`` (0: unlimited) go to the AE as they are.
* Called and calling AE titles are checked by :func:`handlers.handle_requested`, so the
  AE's own single-title checks are off.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.receiver import handlers
from services.receiver.handlers import ReceiverContext
from services.receiver.settings import ReceiverSettings
from shared.config import ScpConfig
from shared.errors import InvalidInputError
from shared.identifiers import is_valid_uid


def build_ae(scp: ScpConfig, settings: ReceiverSettings) -> Any:
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _config.LOG_HANDLER_LEVEL = "none"  # no per-PDU logging handlers
    ae = AE(ae_title=scp.ae_titles[0].ae_title)
    ae.maximum_associations = scp.max_associations
    ae.maximum_pdu_size = scp.max_pdu_size
    ae.network_timeout = settings.dicom_network_timeout_seconds
    ae.acse_timeout = settings.dicom_acse_timeout_seconds
    ae.dimse_timeout = settings.dicom_dimse_timeout_seconds
    ae.require_called_aet = False
    ae.require_calling_aet = []
    if scp.verification.enabled:
        syntaxes = list(scp.verification.transfer_syntaxes)
        bad = [uid for uid in syntaxes if not is_valid_uid(uid)]
        if bad:
            raise InvalidInputError(
                f"dicom > scp > verification > transfer-syntaxes: {bad[0]!r} is not a UID"
            )
        if syntaxes:
            ae.add_supported_context(Verification, syntaxes)
        else:
            ae.add_supported_context(Verification)
    return ae


def event_handlers(context: ReceiverContext) -> list[tuple[Any, Any, list[Any]]]:
    return [
        (evt.EVT_CONN_OPEN, handlers.handle_connection_open, [context]),
        (evt.EVT_REQUESTED, handlers.handle_requested, [context]),
        (evt.EVT_ESTABLISHED, handlers.handle_established, [context]),
        (evt.EVT_C_ECHO, handlers.handle_echo, [context]),
        (evt.EVT_C_STORE, handlers.handle_store, [context]),
        (evt.EVT_RELEASED, handlers.handle_released, [context]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [context]),
    ]


def start_server(ae: Any, scp: ScpConfig, context: ReceiverContext) -> Any:
    """Listen on ``scp.host:scp.port`` (non-blocking); the server is returned."""
    try:
        return ae.start_server(
            (scp.host, scp.port), block=False, evt_handlers=event_handlers(context)
        )
    except OSError as exc:
        raise InvalidInputError(
            f"cannot listen on {scp.host}:{scp.port}: {exc.strerror or exc}"
        ) from exc
