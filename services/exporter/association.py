# mypy: disallow-untyped-calls=False
"""One association to a destination, and sending one stored file over it.

* **Presentation contexts** come from the files: one per (SOP class, stored transfer syntax)
  pair, plus, for a file stored in Explicit or Implicit VR Little Endian, a second context
  with the other of the two, so an SCP that accepts only one of them still gets the file
  (:func:`plan_associations`). Nothing else is proposed: compressed files go in their own
  transfer syntax or not at all, never transcoded. At most 128 contexts fit in one
  association; an export that needs more (many SOP classes) uses one association per group
  of files, in order, alternatives dropped first.
* **Sending as stored.** A file's bytes (downloaded into memory) are sent after its File
  Meta Information byte for byte, never decoded. Only when the SCP accepted the file's
  SOP class in the *other* little-endian syntax is it decoded and re-encoded (VR encoding
  only; pixel data is untouched) and sent by pynetdicom's ``send_c_store``.
* **One write per file, the response read by the sender.** Once the association is
  established its connection is taken from pynetdicom (:meth:`StoreAssociation._park`:
  pynetdicom's reactor thread finds a stand-in socket with nothing to read, the
  association's thread is paused). For a file sent as stored, the C-STORE request's
  P-DATA-TF PDUs (the command set, then the data set in fragments of the destination's
  maximum PDU length) are built in one buffer and written to the socket at once, and the
  response is read from the socket by the same thread (:func:`read_command`): no per-PDU
  trip through pynetdicom's state machine thread (about 2 ms of CPU per 512 KiB file at
  16 KiB PDUs) and no hand-over of the response from its reactor thread, which polls every
  millisecond. pynetdicom negotiates; it gets the connection back to release, to abort,
  and to send a re-encoded file.
* **Socket.** ``TCP_NODELAY`` is set as the connection opens (``EVT_CONN_OPEN``), so
  small PDUs (the command set, the last fragment) never wait for Nagle's algorithm.
* **DICOM TLS.** A destination with ``tls`` is reached over TLS (BCP 195 profile,
  :func:`shared.tls.destination_tls_args`): its certificate is checked against the destination's
  ``ca-certificates`` (else the system's) and, unless ``verify-hostname`` is false, against
  ``server-name`` (else ``host-ip``); our client certificate is presented when configured.
  A TLS setting that cannot be used (missing file, wrong key) is a permanent error; a
  refused handshake is reported like an unreachable destination (transient).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from services.exporter.meta import FileMeta
from services.exporter.status import StoreOutcome, classify_store_status, status_text
from shared.config import DestinationConfig
from shared.dicom import commands
from shared.logs import get_logger
from shared.tls import TlsConfigError, destination_tls_args

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


def p_data_tf_pdus(
    context_id: int, command: bytes, data: bytes | memoryview, max_pdu: int
) -> bytes:
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


class _Parked:
    """Stands in for pynetdicom's socket while we send and read ourselves: its reactor
    thread, polling for data, finds none and leaves the connection to us."""

    ready = False
    socket = None


class LostAssociationError(Exception):
    """The association ended while waiting for a response (closed, aborted, released)."""


_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")


def _read_exactly(sock: socket.socket, length: int) -> bytes:
    buffer = bytearray(length)
    view = memoryview(buffer)
    done = 0
    while done < length:
        received = sock.recv_into(view[done:])
        if received == 0:
            raise LostAssociationError("the destination closed the connection")
        done += received
    return bytes(buffer)


def read_command(sock: socket.socket) -> bytes:
    """The next DIMSE message's command set from P-DATA-TF PDUs (a data set that follows
    it, which a C-STORE response never has, is read and dropped). Anything else the
    destination sends now (A-ABORT, A-RELEASE-RQ, a broken PDU) ends the association."""
    command = bytearray()
    while True:
        kind, _, length = _PDU_HEADER.unpack(_read_exactly(sock, 6))
        if kind != 0x04:
            raise LostAssociationError(
                f"the destination sent PDU type 0x{kind:02X} instead of a response"
            )
        if length > 1 << 24:
            raise LostAssociationError(f"the destination sent a {length} byte PDU")
        body = _read_exactly(sock, length)
        offset = 0
        while offset + 6 <= len(body):
            item, _context, control = _PDV_HEADER.unpack_from(body, offset)
            end = offset + 4 + item
            if item < 2 or end > len(body):
                raise LostAssociationError("the destination sent a malformed P-DATA-TF PDU")
            if control & 0x01:
                command += body[offset + 6 : end]
                if control & 0x02:
                    return bytes(command)
            offset = end


def _pause_reactor(assoc: Any) -> None:
    """Keep the association's own reactor thread paused while we send. A requestor that
    only sends C-STOREs needs nothing from it; pynetdicom pauses it for every ``send_*``
    anyway (a wait of up to a millisecond, more under load, per file), and lets it run
    again to release or abort (``release``, ``abort`` and ``kill`` do that themselves)."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None:
        return
    checkpoint.clear()
    deadline = time.monotonic() + 1.0
    while not getattr(assoc, "_is_paused", True) and time.monotonic() < deadline:
        time.sleep(0.0002)


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
    _accepted: dict[Pair, int] = field(default_factory=dict)  # accepted: context ID
    _message_id: int = 0
    _socket: Any = None  # pynetdicom's AssociationSocket while we hold the connection

    @property
    def is_open(self) -> bool:
        return self._assoc is not None and bool(self._assoc.is_established)

    def open(self) -> None:
        """Request the association; raises :class:`AssociationError` if there is none."""
        self.abort()
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
            _pause_reactor(assoc)
            self._assoc = assoc
            self._park()
            self._accepted = {
                (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id
                for cx in assoc.accepted_contexts
                if cx.context_id is not None
            }
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
        try:
            return destination_tls_args(self.destination)
        except TlsConfigError as exc:
            raise AssociationError(exc.reason, transient=False) from exc

    def send(self, file: bytes | Path, meta: FileMeta) -> SendResult:
        """C-STORE a stored file, its bytes or a local path (its header is ``meta``), and
        classify the response."""
        data = file.read_bytes() if isinstance(file, Path) else file
        exact = (meta.sop_class_uid, meta.transfer_syntax_uid)
        context_id = self._accepted.get(exact)
        dataset: Dataset | None = None
        if context_id is None:
            other = _LITTLE_ENDIAN_ALTERNATIVE.get(meta.transfer_syntax_uid)
            if other is None or (meta.sop_class_uid, other) not in self._accepted:
                return SendResult(
                    StoreOutcome.REFUSED,
                    f"destination accepted no presentation context for SOP class "
                    f"{meta.sop_class_uid} in transfer syntax {meta.transfer_syntax_uid}",
                )
            try:
                dataset = dcmread(BytesIO(data))
            except (InvalidDicomError, ValueError, EOFError) as exc:
                return SendResult(StoreOutcome.REFUSED, f"cannot re-encode: {exc}")
        if not self.is_open:
            return SendResult(StoreOutcome.RESEND, "the association was lost")
        try:
            if context_id is not None:
                code = self._send_as_stored(context_id, meta, data)
            else:
                self._unpark()
                response = self._assoc.send_c_store(dataset, msg_id=self._next_message_id())
                if self.is_open:
                    _pause_reactor(self._assoc)  # send_c_store lets it run again
                    self._park()
                status = response.get("Status") if isinstance(response, Dataset) else None
                code = None if status is None else int(status)
        except RuntimeError:
            return SendResult(StoreOutcome.RESEND, "the association was lost")
        except (ValueError, AttributeError) as exc:
            return SendResult(StoreOutcome.REFUSED, f"cannot send: {exc}")
        outcome = classify_store_status(code)
        if code is None:
            return SendResult(outcome, "no response (timeout or association aborted)")
        return SendResult(outcome, "" if code == 0 else status_text(code), code)

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _send_as_stored(self, context_id: int, meta: FileMeta, data: bytes) -> int | None:
        """Send the data set after the File Meta Information byte for byte, never decoded,
        and wait for the response on this thread: the C-STORE request's P-DATA-TF PDUs in
        one buffer written to the socket, then the response's PDUs read from it. Returns
        the response's status, None when there is none (the association is then aborted,
        as pynetdicom does)."""
        sock = self._socket.socket if self._socket is not None else None
        if sock is None:
            raise RuntimeError("the association was lost")
        message_id = self._next_message_id()
        command = commands.c_store_rq(message_id, meta.sop_class_uid, meta.sop_instance_uid)
        body = memoryview(data)[meta.dataset_offset :]
        pdus = p_data_tf_pdus(context_id, command, body, self._assoc.dimse.maximum_pdu_size)
        try:
            sock.settimeout(self.timeouts.network)
            sock.sendall(pdus)
            sock.settimeout(self.timeouts.dimse)
            response = commands.command_numbers(read_command(sock))
        except (OSError, LostAssociationError, ValueError) as exc:  # TimeoutError is an OSError
            log.info(
                "no C-STORE response",
                extra={"destination": self.destination.name, "reason": str(exc) or "timeout"},
            )
            self.abort()
            return None
        status = response.get(commands.STATUS)
        if (
            response.get(commands.COMMAND_FIELD) != commands.C_STORE_RSP
            or response.get(commands.MESSAGE_ID_BEING_RESPONDED_TO) != message_id
            or status is None
        ):
            log.info("invalid C-STORE response", extra={"destination": self.destination.name})
            self.abort()
            return None
        return status

    def _park(self) -> None:
        """Take the connection from pynetdicom's reactor thread (which keeps running,
        finding nothing to read, polling less often); we send and read ourselves."""
        dul = self._assoc.dul
        if self._socket is None and dul.socket is not None:
            self._socket, dul.socket = dul.socket, _Parked()
            dul._run_loop_delay = 0.02

    def _unpark(self) -> None:
        """Give the connection back to pynetdicom (to release, abort or re-encode)."""
        if self._assoc is None or self._socket is None:
            return
        dul = self._assoc.dul
        dul.socket, self._socket = self._socket, None
        dul._run_loop_delay = 0.001
        with contextlib.suppress(AttributeError, OSError):
            dul.socket.socket.settimeout(self.timeouts.network)
        dul._idle_timer.restart()  # it saw no traffic while parked

    def close(self) -> None:
        """Release the association (abort it if the release fails)."""
        self._unpark()
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
        self._unpark()
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()
