"""The pynetdicom Application Entity: one listening port for all of our AE titles.

* Storage: pynetdicom's unrestricted storage service (``_config.UNRESTRICTED_STORAGE_SERVICE``)
  accepts every storage SOP Class, private and unknown ones included, with the first
  transfer syntax the peer proposes for it; instances are stored in it, never converted.
  The setting is process-wide and only concerns association acceptors.
* Verification: a Verification context when ``verification.enabled`` (its
  ``transfer-syntaxes``, else pynetdicom's defaults); none when disabled, so C-ECHO is
  refused at negotiation.
* Called and calling AE titles are checked by :func:`handlers.handle_requested`, so the
  AE's own single-title checks are off.
* Hostile peers (:mod:`services.receiver.transport`): every accepted socket is guarded;
  ``max-pdu-size`` is announced in A-ASSOCIATE-AC and enforced on every PDU received;
  ``max-connections`` and ``max-connections-per-address`` are applied as connections
  arrive; ``max-associations`` counts associations only (pynetdicom's own count, of
  connections, is set to ``max-connections`` so it never decides).
* DICOM TLS (``dicom > scp > tls``): a second listening port with the BCP 195 profile
  (:mod:`shared.tls`); an AE title with ``require-tls`` is refused on the plain port.
* Per-instance latency: pynetdicom's reactor threads wake when the peer sends
  (:mod:`services.receiver.wakeup`), and a C-STORE request is served on the thread that
  decoded it (:func:`services.receiver.dimse.guard`). Process-wide, installed here.
* :class:`DicomListeners` holds the ports; :meth:`DicomListeners.stop_accepting` closes
  them and leaves open associations running (for a drain on SIGTERM).
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.receiver import handlers, transport, wakeup
from services.receiver.handlers import ReceiverContext
from services.receiver.limits import ConnectionLimits
from services.receiver.settings import ReceiverSettings
from services.receiver.transport import GuardedAssociationServer, PduLimits, PortPolicy
from shared.config import ScpConfig
from shared.errors import InvalidInputError
from shared.identifiers import is_valid_uid
from shared.tls import server_context


def build_ae(scp: ScpConfig, settings: ReceiverSettings) -> Any:
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    wakeup.install()
    _config.LOG_HANDLER_LEVEL = "none"  # no per-PDU logging handlers
    ae = AE(ae_title=scp.ae_titles[0].ae_title if scp.ae_titles else "SERIESFLOW")
    # Associations are counted by ConnectionLimits; pynetdicom counts acceptor threads,
    # of which there are never more than connections.
    ae.maximum_associations = scp.max_connections
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


def handle_requested_limits(event: Any, context: ReceiverContext) -> None:
    """``EVT_REQUESTED``, after :func:`handlers.handle_requested`: an AE title with
    ``require-tls`` is refused off the TLS port (called AE title not recognized); then the
    association needs a place among ``max-associations``."""
    assoc = event.assoc
    if assoc.is_rejected or assoc.is_aborted:
        return
    guard = transport.guard_of(assoc)
    called = str(assoc.requestor.primitive.called_ae_title).strip()
    ae_title = context.ae_titles.get(called)
    tls_only = ae_title is not None and ae_title.require_tls
    if guard is not None and tls_only and not guard.connection.tls:
        guard.report(
            30,
            "association rejected: the AE title is reachable over TLS only",
            called_ae_title=called,
            calling_ae_title=str(assoc.requestor.primitive.calling_ae_title).strip(),
        )
        assoc.acse.send_reject(0x01, 0x01, 0x07)
        assoc.kill()
        context.metrics.association_refused("TLS required")
        return
    transport.admit_association(event)


def event_handlers(context: ReceiverContext) -> list[tuple[Any, Any, list[Any]]]:
    return [
        (evt.EVT_CONN_OPEN, handlers.handle_connection_open, [context]),
        (evt.EVT_CONN_OPEN, transport.bind_association, []),
        (evt.EVT_REQUESTED, handlers.handle_requested, [context]),
        (evt.EVT_REQUESTED, handle_requested_limits, [context]),
        (evt.EVT_ESTABLISHED, handlers.handle_established, [context]),
        (evt.EVT_C_ECHO, handlers.handle_echo, [context]),
        (evt.EVT_C_STORE, handlers.handle_store, [context]),
        (evt.EVT_RELEASED, handlers.handle_released, [context]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [context]),
        (evt.EVT_RELEASED, transport.dismiss_association, []),
        (evt.EVT_ABORTED, transport.dismiss_association, []),
    ]


class DicomListeners:
    """The receiver's listening ports: plain, and TLS when configured."""

    def __init__(self, plain: GuardedAssociationServer, tls: GuardedAssociationServer | None):
        self.plain = plain
        self.tls = tls

    @property
    def server_address(self) -> tuple[str, int]:
        """The plain port's address (as pynetdicom's server has it)."""
        address = self.plain.server_address
        return str(address[0]), int(address[1])

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def tls_port(self) -> int | None:
        return None if self.tls is None else int(self.tls.server_address[1])

    @property
    def limits(self) -> ConnectionLimits:
        return self.plain.policy.limits

    def stop_accepting(self) -> None:
        """Close the listening ports: new connections are refused by the OS, associations
        already open keep running to their end (idempotent; for a drain). Connections
        that have not sent a whole association request yet hold nothing: they are closed
        now, so a drain does not wait for their ARTIM time."""
        for server in (self.plain, self.tls):
            if server is not None:
                server.shutdown()
        for server in (self.plain, self.tls):
            if server is not None:
                server.end_unassociated()


def _listen(
    ae: Any, scp: ScpConfig, port: int, context: ReceiverContext, policy: PortPolicy
) -> GuardedAssociationServer:
    try:
        server = ae.make_server(
            (scp.host, port),
            evt_handlers=event_handlers(context),
            server_class=GuardedAssociationServer,
            policy=policy,
        )
    except OSError as exc:
        raise InvalidInputError(
            f"cannot listen on {scp.host}:{port}: {exc.strerror or exc}"
        ) from exc
    server.start(f"AcceptorServer@{scp.host}:{port}")
    return cast(GuardedAssociationServer, server)


def start_server(ae: Any, scp: ScpConfig, context: ReceiverContext) -> DicomListeners:
    """Listen on ``scp.host:scp.port``, and on ``scp.tls.port`` with TLS (non-blocking).

    Timeouts are the AE's (``acse_timeout``: ARTIM; ``network_timeout``)."""
    tls_context = None if scp.tls is None else server_context(scp.tls)
    limits = ConnectionLimits(
        scp.max_connections, scp.max_connections_per_address, scp.max_associations
    )
    plain_policy = PortPolicy(
        limits=limits,
        pdu_limits=PduLimits(scp.max_pdu_size),
        artim_seconds=float(ae.acse_timeout),
        network_seconds=float(ae.network_timeout),
    )
    plain = _listen(ae, scp, scp.port, context, plain_policy)
    if scp.tls is None or tls_context is None:
        return DicomListeners(plain, None)
    try:
        tls = _listen(
            ae, scp, scp.tls.port, context, replace(plain_policy, tls_context=tls_context)
        )
    except Exception:
        plain.shutdown()
        raise
    return DicomListeners(plain, tls)
