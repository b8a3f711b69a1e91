# mypy: disallow-untyped-calls=False
"""One association to a destination, and sending one stored file over it.

* **Presentation contexts** come from the files: one per (SOP class, stored transfer syntax)
  pair, plus, for a file stored in Explicit or Implicit VR Little Endian, a second context
  with the other of the two, so an SCP that accepts only one of them still gets the file
  (:func:`plan_associations`). Nothing else is proposed: compressed files go in their own
  transfer syntax or not at all, never transcoded. At most 128 contexts fit in one
  association; an export that needs more (many SOP classes) uses one association per group
  of files, in order, alternatives dropped first.
* **Sending as stored.** A file goes from its spool path with pynetdicom's chunked mode
  (``_config.STORE_SEND_CHUNKED_DATASET``): the encoded data set after the File Meta
  Information is sent byte for byte, never decoded. Only when the SCP accepted the file's
  SOP class in the *other* little-endian syntax is it decoded and re-encoded (VR encoding
  only; pixel data is untouched).
* **One write per file.** For a file sent as stored, the C-STORE request's P-DATA-TF PDUs
  (the command set, then the data set in fragments of the destination's maximum PDU
  length) are built in one buffer and written to the association's socket at once
  (:func:`_send_store_in_one_write`), instead of one PDU at a time through pynetdicom's
  state machine thread, which cost about 2 ms of CPU per 512 KiB file at 16 KiB PDUs.
  pynetdicom still negotiates, picks the context, builds the command set, and reads and
  checks the response; everything else it sends goes its own way.
* **Socket.** ``TCP_NODELAY`` is set as the connection opens (``EVT_CONN_OPEN``), so
  small PDUs (the command set, the last fragment) never wait for Nagle's algorithm.
* **DICOM TLS.** A destination with ``tls`` is reached over TLS (BCP 195 profile,
  :func:`shared.tls.client_context`): its certificate is checked against the destination's
  ``ca-certificates`` (else the system's) and, unless ``verify-hostname`` is false, against
  ``server-name`` (else ``host-ip``); our client certificate is presented when configured.
  A TLS setting that cannot be used (missing file, wrong key) is a permanent error; a
  refused handshake is reported like an unreachable destination (transient).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context

from services.exporter.meta import FileMeta
from services.exporter.status import StoreOutcome, classify_store_status, status_text
from shared.config import DestinationConfig
from shared.logs import get_logger
from shared.tls import TlsConfigError, client_context

MAX_CONTEXTS = 128
_LITTLE_ENDIAN_ALTERNATIVE = {
    str(ExplicitVRLittleEndian): str(ImplicitVRLittleEndian),
    str(ImplicitVRLittleEndian): str(ExplicitVRLittleEndian),
}
log = get_logger("exporter")

Pair = tuple[str, str]  # (SOP class UID, transfer syntax UID)


@dataclass(frozen=True)
class AssociationPlan:
    """Files (indices into the caller's list) sent over one association, and its contexts."""

    files: tuple[int, ...]
    contexts: tuple[Pair, ...]


def plan_associations(pairs: list[Pair], limit: int = MAX_CONTEXTS) -> list[AssociationPlan]:
    """Group files, in order, so each group's contexts fit in one association.

    ``pairs[i]`` is file i's (SOP class, transfer syntax). Usually this is one group.
    """
    groups: list[tuple[list[int], list[Pair]]] = []
    for index, pair in enumerate(pairs):
        if not groups or (pair not in groups[-1][1] and len(groups[-1][1]) >= limit):
            groups.append(([], []))
        files, exact = groups[-1]
        files.append(index)
        if pair not in exact:
            exact.append(pair)
    plans = []
    for files, exact in groups:
        contexts = list(exact)
        for sop_class, syntax in exact:
            other = _LITTLE_ENDIAN_ALTERNATIVE.get(syntax)
            if other is None or (sop_class, other) in contexts:
                continue
            if len(contexts) >= limit:
                break
            contexts.append((sop_class, other))
        plans.append(AssociationPlan(tuple(files), tuple(contexts)))
    return plans


class AssociationError(Exception):
    """No association: ``transient`` when trying again later may work."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class SendResult:
    outcome: StoreOutcome
    detail: str = ""
    status: int | None = None


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0


def _keep_responses_for_the_sender(assoc: Any) -> None:
    """Work around a pynetdicom race: the association's own reactor thread can take the
    C-STORE response off the DIMSE queue before ``send_c_store`` reads it (it then logs
    "Received unexpected C-STORE service message" and drops it), and ``send_c_store`` waits
    the whole DIMSE timeout for nothing. Seen under CPU contention with pynetdicom 3.0.4;
    the same family as pynetdicom issues #435 and #875. A requestor is never sent requests
    it must serve, so a response the reactor takes is put back where the sender waits."""
    serve = getattr(assoc, "_serve_request", None)
    messages = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if serve is None or messages is None:
        return

    def serve_request(msg: Any, context_id: int) -> None:
        if getattr(msg, "is_valid_response", False):
            messages.put((context_id, msg))
            log.info("C-STORE response taken by pynetdicom's reactor, handed back")
            return
        serve(msg, context_id)

    assoc._serve_request = serve_request


# P-DATA-TF PDU header and one PDV item header: PDU type, reserved, PDU length, item
# length, presentation context ID, message control header (PS3.8 9.3.5, E.2)
_PDATA_HEADER = struct.Struct(">BBIIBB")


def p_data_tf_pdus(context_id: int, command: bytes, data: bytes, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of one DIMSE message, one PDV each: the command set, then the data
    set, each cut into fragments whose PDV list fits ``max_pdu`` (0: no limit), as
    pynetdicom's own ``encode_msg`` cuts them."""
    size = max_pdu - 6 if max_pdu else max(len(command), len(data), 1)
    parts: list[bytes | memoryview] = []
    for payload, middle, last in ((command, 0x01, 0x03), (data, 0x00, 0x02)):
        view = memoryview(payload)
        for start in range(0, max(len(view), 1), size):
            chunk = view[start : start + size]
            control = last if start + size >= len(view) else middle
            parts.append(
                _PDATA_HEADER.pack(0x04, 0, len(chunk) + 6, len(chunk) + 2, context_id, control)
            )
            parts.append(chunk)
    return b"".join(parts)


def _send_store_in_one_write(assoc: Any) -> None:
    """Make the association send a C-STORE request whose data set is a file (pynetdicom's
    chunked mode) as one buffer written straight to its socket. The requestor's own thread
    is the only one sending P-DATA while it waits for the response, so nothing can come
    between the PDUs. Any other message goes through pynetdicom as before."""
    dimse = getattr(assoc, "dimse", None)
    dul = getattr(assoc, "dul", None)
    original = getattr(dimse, "send_msg", None)
    if dimse is None or dul is None or original is None:
        return

    def send_msg(primitive: Any, context_id: int) -> None:
        where = getattr(primitive, "_dataset_path", None)
        transport = dul.socket
        if (
            not isinstance(primitive, C_STORE)
            or primitive.MessageIDBeingRespondedTo is not None
            or not isinstance(where, tuple)
            or transport is None
        ):
            original(primitive, context_id)
            return
        message = C_STORE_RQ()
        message.primitive_to_message(primitive)
        command = encode(message.command_set, True, True)
        if command is None:  # pragma: no cover - a command set pydicom cannot encode
            original(primitive, context_id)
            return
        path, offset = where
        with Path(path).open("rb") as file:
            file.seek(offset)
            data = file.read()
        transport.send(p_data_tf_pdus(context_id, command, data, dimse.maximum_pdu_size))

    dimse.send_msg = send_msg


def _set_nodelay(event: Any) -> None:
    with contextlib.suppress(AttributeError, OSError):  # a socket without the option
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class StoreAssociation:
    """An association to ``destination`` proposing ``contexts``; open, send files, close."""

    destination: DestinationConfig
    calling_ae_title: str
    contexts: tuple[Pair, ...]
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_pdu: int = 16382
    _assoc: Any = None
    _accepted: frozenset[Pair] = frozenset()

    @property
    def is_open(self) -> bool:
        return self._assoc is not None and bool(self._assoc.is_established)

    def open(self) -> None:
        """Request the association; raises :class:`AssociationError` if there is none."""
        self.abort()
        # Chunked sending reads the file and sends its data set as stored. The flag is
        # process-wide and only changes what send_c_store does with a path.
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = self.timeouts.connect
        ae.acse_timeout = self.timeouts.acse
        ae.dimse_timeout = self.timeouts.dimse
        ae.network_timeout = self.timeouts.network
        where = f"{self.destination.ae_title}@{self.destination.host_ip}:{self.destination.port}"
        tls_args = self._tls_args()
        if tls_args is not None:
            where += " over TLS"
        try:
            assoc = ae.associate(
                self.destination.host_ip,
                self.destination.port,
                contexts=[build_context(sop, syntax) for sop, syntax in self.contexts],
                ae_title=self.destination.ae_title,
                max_pdu=self.max_pdu,
                evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)],
                tls_args=tls_args,
            )
        except OSError as exc:  # name resolution
            raise AssociationError(
                f"cannot reach destination {self.destination.name} ({where}): {exc}", True
            ) from exc
        if assoc.is_established:
            _keep_responses_for_the_sender(assoc)
            _send_store_in_one_write(assoc)
            self._assoc = assoc
            self._accepted = frozenset(
                (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts
            )
            return
        name = self.destination.name
        if assoc.is_rejected:
            result = getattr(getattr(assoc.acceptor, "primitive", None), "result", None)
            diagnostic = getattr(getattr(assoc.acceptor, "primitive", None), "diagnostic", None)
            permanent = result == 0x01
            raise AssociationError(
                f"destination {name} ({where}) rejected the association "
                f"({'permanently' if permanent else 'transiently'}, reason {diagnostic})",
                transient=not permanent,
            )
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            raise AssociationError(
                f"destination {name} ({where}) accepted none of the proposed SOP classes "
                "and transfer syntaxes",
                transient=False,
            )
        if assoc.is_aborted:
            raise AssociationError(f"destination {name} ({where}) aborted the association", True)
        if tls_args is not None:
            raise AssociationError(
                f"destination {name} ({where}) is unreachable or refused the TLS handshake "
                "(its certificate, ca-certificates, server-name)",
                True,
            )
        raise AssociationError(f"destination {name} ({where}) is unreachable", True)

    def _tls_args(self) -> tuple[Any, str] | None:
        """pynetdicom's ``tls_args`` for a destination with ``tls``, else None."""
        tls = self.destination.tls
        if tls is None:
            return None
        try:
            context = client_context(tls, f"destination {self.destination.name}: tls")
        except TlsConfigError as exc:
            raise AssociationError(exc.reason, transient=False) from exc
        return context, tls.server_name or self.destination.host_ip

    def send(self, path: Path, meta: FileMeta) -> SendResult:
        """C-STORE the file at ``path`` (its header is ``meta``) and classify the response."""
        exact = (meta.sop_class_uid, meta.transfer_syntax_uid)
        dataset: Path | Dataset
        if exact in self._accepted:
            dataset = path
        else:
            other = _LITTLE_ENDIAN_ALTERNATIVE.get(meta.transfer_syntax_uid)
            if other is None or (meta.sop_class_uid, other) not in self._accepted:
                return SendResult(
                    StoreOutcome.REFUSED,
                    f"destination accepted no presentation context for SOP class "
                    f"{meta.sop_class_uid} in transfer syntax {meta.transfer_syntax_uid}",
                )
            try:
                dataset = dcmread(path)
            except (InvalidDicomError, ValueError, EOFError) as exc:
                return SendResult(StoreOutcome.REFUSED, f"cannot re-encode: {exc}")
        if not self.is_open:
            return SendResult(StoreOutcome.RESEND, "the association was lost")
        try:
            response = self._assoc.send_c_store(dataset)
        except RuntimeError:
            return SendResult(StoreOutcome.RESEND, "the association was lost")
        except (ValueError, AttributeError) as exc:
            return SendResult(StoreOutcome.REFUSED, f"cannot send: {exc}")
        status = response.get("Status") if isinstance(response, Dataset) else None
        outcome = classify_store_status(None if status is None else int(status))
        if status is None:
            return SendResult(outcome, "no response (timeout or association aborted)")
        code = int(status)
        return SendResult(outcome, "" if code == 0 else status_text(code), code)

    def close(self) -> None:
        """Release the association (abort it if the release fails)."""
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        try:
            if assoc.is_established:
                assoc.release()
        except Exception:  # pragma: no cover - pynetdicom internals
            assoc.abort()
        finally:
            if assoc.is_established:
                assoc.abort()

    def abort(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()
