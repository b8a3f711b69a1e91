"""The DICOM port's transport, hardened against hostile peers before any authentication.

pynetdicom 3 reads each PDU whole into memory, as long as its header announces, with no
timeout on the accepted socket, and counts every connection (even one that has not sent
a byte) against ``maximum_associations``. Here, below pynetdicom's DICOM Upper Layer:

* **Every accepted socket is a guarded socket** (:class:`GuardedSocket`, or
  :class:`GuardedSSLSocket` on the TLS port). pynetdicom's ``AssociationSocket`` reads a
  PDU's 6-byte header and then its body through the socket's ``recv``; the guard follows
  the byte stream (:class:`PduFramer`) and checks each header as it completes, before any
  of the body is read. A PDU longer than allowed, or of an unknown type, is answered
  with an A-ABORT and the connection is closed: to pynetdicom the peer closed the
  connection (an A-P-ABORT once associated).
* **Read timeouts from the first byte.** The A-ASSOCIATE-RQ must have arrived whole
  within the ARTIM time (``SERIESFLOW_DICOM_ACSE_TIMEOUT_SECONDS``) of ``accept``, the
  TLS handshake included; each later PDU within the network timeout
  (``SERIESFLOW_DICOM_NETWORK_TIMEOUT_SECONDS``) of its first byte. Sends time out after
  the network timeout. Idle time between PDUs stays pynetdicom's (network timeout).
* **Connections are counted per address** (:mod:`services.receiver.limits`) as they are
  accepted, and the TLS handshake runs in the connection's own thread, so no peer can
  stall the accept loop.
* **Only associations count against max-associations**: :func:`admit_association`
  (bound to ``EVT_REQUESTED``) gives a place to a request that passed the AE title checks;
  pynetdicom's own count (of connections) is set out of reach by the caller.

The hooks are public pynetdicom API: ``AE.make_server(server_class=...)``,
``AssociationServer(request_handler=...)``, ``RequestHandler.handle``, events, and
``Association.dul.socket.socket`` (the socket the AssociationSocket wraps). Every rejected,
timed-out or aborted connection is logged with the peer's address, never with patient
data.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from services.receiver.limits import Connection, ConnectionLimits, Refusal
from shared.logs import get_logger

log = get_logger("receiver.transport")

PDU_TYPES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
P_DATA_TF = 0x04
MIN_ASSOCIATION_PDU_LIMIT = 65536
"""Association PDUs (A-ASSOCIATE-RQ above all) may be this long even when max-pdu-size
is smaller: max-pdu-size is what we announce for P-DATA-TF, and a request proposing 128
presentation contexts needs some 20 KB."""

# A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value)
_ABORT_INVALID_PARAMETER = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6))
# A-ABORT, source 2 (service provider), reason 0 (not specified)
_ABORT_NOT_SPECIFIED = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0))


@dataclass(frozen=True)
class PduLimits:
    """The longest PDU (length field, header excluded) accepted from a peer."""

    max_pdu_size: int
    """P-DATA-TF: what we announce as Maximum Length Received in A-ASSOCIATE-AC."""

    @property
    def other(self) -> int:
        return max(self.max_pdu_size, MIN_ASSOCIATION_PDU_LIMIT)

    def limit(self, pdu_type: int) -> int:
        return self.max_pdu_size if pdu_type == P_DATA_TF else self.other


@dataclass(frozen=True)
class Violation:
    """A PDU header that ends the connection."""

    reason: str
    pdu_type: int
    length: int


@dataclass
class PduFramer:
    """Follows a peer's byte stream PDU by PDU and checks each header as it completes."""

    limits: PduLimits
    pdus: int = 0
    """PDUs received whole."""
    received: int = 0
    started_at: float | None = None
    """When the first byte of the PDU being received arrived (None between PDUs)."""
    _header: bytearray = field(default_factory=bytearray)
    _remaining: int = 0

    @property
    def in_pdu(self) -> bool:
        return self.started_at is not None

    def feed(self, data: bytes, now: float) -> Violation | None:
        """Account for ``data``; the first violation found, if any."""
        self.received += len(data)
        view = memoryview(data)
        while view:
            if self.started_at is None:
                self.started_at = now
            if self._remaining == 0:
                take = min(6 - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) < 6:
                    continue
                pdu_type, _, length = struct.unpack(">BBL", self._header)
                if pdu_type not in PDU_TYPES:
                    return Violation(f"unknown PDU type 0x{pdu_type:02X}", pdu_type, length)
                limit = self.limits.limit(pdu_type)
                if length > limit:
                    return Violation(
                        f"{PDU_TYPES[pdu_type]} of {length} bytes, more than the {limit} allowed",
                        pdu_type,
                        length,
                    )
                self._remaining = length
                if length == 0:
                    self._complete()
                continue
            take = min(self._remaining, len(view))
            self._remaining -= take
            view = view[take:]
            if self._remaining == 0:
                self._complete()
        return None

    def _complete(self) -> None:
        self.pdus += 1
        self.started_at = None
        self._header.clear()


@dataclass(frozen=True)
class PortPolicy:
    """What every connection on one listening port is held to."""

    limits: ConnectionLimits
    pdu_limits: PduLimits
    artim_seconds: float
    """The A-ASSOCIATE-RQ (and the TLS handshake) must be in within this of ``accept``."""
    network_seconds: float
    """Each later PDU must be in within this of its first byte; each send done within it."""
    tls_context: ssl.SSLContext | None = None


class ConnectionGuard:
    """One connection's state: its place in the limits, its PDU framing, its deadlines."""

    def __init__(self, connection: Connection, policy: PortPolicy) -> None:
        self.connection = connection
        self.policy = policy
        self.framer = PduFramer(policy.pdu_limits)
        self.assoc: Any = None
        """The pynetdicom Association serving this connection (set at EVT_CONN_OPEN)."""
        self.broken = False
        """The connection was ended here (timeout, violation): reads see end of stream."""
        self.reported = False
        """Its end was logged already."""
        self.sock: socket.socket | None = None
        self.state_lock = threading.Lock()
        """Held while bytes are accounted, so that a connection is ended before its
        association request or after it, never while it completes."""
        self._closed = False
        self._lock = threading.Lock()

    @property
    def peer(self) -> str:
        return self.connection.peer

    @property
    def association_requested(self) -> bool:
        return self.framer.pdus > 0

    def read_deadline(self, now: float) -> float:
        if not self.association_requested:
            return self.connection.accepted_at + self.policy.artim_seconds
        started = self.framer.started_at
        return (started if started is not None else now) + self.policy.network_seconds

    def report(self, level: int, message: str, **fields: Any) -> None:
        self.reported = True
        log.log(
            level,
            message,
            extra={"peer": self.peer, "tls": self.connection.tls, **fields},
        )

    def end_unassociated(self) -> bool:
        """Close this connection if no A-ASSOCIATE-RQ has arrived whole (it holds nothing;
        for a drain); True if it was closed here."""
        with self.state_lock:
            if self.broken or self.association_requested:
                return False
            self.broken = True
        self.report(
            20,
            "connection closed before its association request: the receiver is stopping",
            bytes_received=self.framer.received,
        )
        if self.sock is not None:
            with contextlib.suppress(OSError, ValueError):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        self.wake_association()
        return True

    def wake_association(self) -> None:
        """No association request will come on this connection: the association thread,
        which waits up to the ARTIM time for one, is told at once (pynetdicom reads
        ``None`` from the DUL's ``to_user_queue`` as "timed out"), so the thread and the
        connection's place are freed now rather than up to 30 s later."""
        if self.association_requested:
            return
        queue = getattr(getattr(self.assoc, "dul", None), "to_user_queue", None)
        if queue is not None:
            queue.put(None)

    def finish(self) -> None:
        """The connection's thread is done: free its place (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.policy.limits.close(self.connection)


class _Guarded:
    """recv/send of a socket that applies its :class:`ConnectionGuard` (mixed into a
    ``socket.socket`` or ``ssl.SSLSocket`` subclass)."""

    guard: ConnectionGuard

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        guard = self.guard
        if guard.broken:
            return b""
        base = cast(Any, super())
        now = time.monotonic()
        remaining = guard.read_deadline(now) - now
        try:
            if remaining <= 0:
                raise TimeoutError
            base.settimeout(remaining)
            data = cast(bytes, base.recv(bufsize, flags))
        except TimeoutError:
            self._timed_out()
            return b""
        with guard.state_lock:
            if guard.broken:
                return b""
            violation = guard.framer.feed(data, time.monotonic())
        if violation is not None:
            guard.report(
                30,  # WARNING
                "PDU refused: connection aborted",
                reason=violation.reason,
                pdu_type=f"0x{violation.pdu_type:02X}",
                pdu_length=violation.length,
                association_requested=guard.association_requested,
            )
            self._end(_ABORT_INVALID_PARAMETER)
            guard.wake_association()
            return b""
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        guard = self.guard
        if guard.broken:
            raise ConnectionAbortedError("connection ended by the receiver")
        base = cast(Any, super())
        base.settimeout(guard.policy.network_seconds)
        try:
            return cast(int, base.send(data, flags))
        except TimeoutError:
            guard.report(
                30,
                "send timed out: connection closed",
                timeout_seconds=guard.policy.network_seconds,
            )
            self._end(None)
            raise

    def _timed_out(self) -> None:
        guard = self.guard
        if not guard.association_requested:
            guard.report(
                30,
                "no complete association request in time: connection closed",
                timeout_seconds=guard.policy.artim_seconds,
                bytes_received=guard.framer.received,
            )
            self._end(None)  # PS3.8 ARTIM expiry before association: close, no A-ABORT
            guard.wake_association()
            return
        guard.report(
            30,
            "PDU not received whole in time: connection aborted",
            timeout_seconds=guard.policy.network_seconds,
        )
        self._end(_ABORT_NOT_SPECIFIED)

    def _end(self, abort: bytes | None) -> None:
        """Send ``abort`` (best effort, briefly) and shut the connection down."""
        self.guard.broken = True
        base = cast(Any, super())
        if abort is not None:
            with contextlib.suppress(OSError, ValueError):
                base.settimeout(1.0)
                base.send(abort)
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(cast(socket.socket, self), socket.SHUT_RDWR)


class GuardedSocket(_Guarded, socket.socket):
    """A plain TCP connection on the DICOM port."""


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):  # type: ignore[misc]  # recv's names
    """A TLS connection on the DICOM TLS port (``SSLContext.sslsocket_class``)."""


def guard_socket(raw: socket.socket, guard: ConnectionGuard) -> socket.socket:
    """``raw`` (just accepted) as a guarded socket; TLS is set up, not yet negotiated."""
    context = guard.policy.tls_context
    if context is not None:
        context.sslsocket_class = GuardedSSLSocket
        wrapped = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        cast(Any, wrapped).guard = guard
        guard.sock = wrapped
        return wrapped
    sock = GuardedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    sock.guard = guard
    guard.sock = sock
    return sock


def guard_of(assoc: Any) -> ConnectionGuard | None:
    """The guard of the connection an Association runs on (None for a socket not ours)."""
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    return getattr(getattr(transport, "socket", None), "guard", None)


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler, after the TLS handshake (with the ARTIM deadline), and
    kept running until the association's thread ended so the connection's place in the
    limits is freed only then."""

    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        guard: ConnectionGuard = cast(Any, sock).guard
        try:
            if isinstance(sock, ssl.SSLSocket) and not self._handshake(sock, guard):
                return
            super().handle()
            if guard.assoc is not None:
                guard.assoc.join()
        finally:
            self._ended(sock, guard)
            cast(GuardedAssociationServer, self.server).forget(guard)

    @staticmethod
    def _handshake(sock: ssl.SSLSocket, guard: ConnectionGuard) -> bool:
        remaining = guard.read_deadline(time.monotonic()) - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            sock.do_handshake()
            return True
        except TimeoutError:
            guard.report(
                30,
                "TLS handshake not done in time: connection closed",
                timeout_seconds=guard.policy.artim_seconds,
            )
        except (ssl.SSLError, OSError) as exc:
            if guard.broken:  # closed here (the receiver is stopping): reported already
                return False
            if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError)):
                # a port probe or health check: connected and closed without a word
                guard.report(20, "connection closed during the TLS handshake")
                return False
            guard.report(
                30,
                "TLS handshake failed: connection closed",
                reason=getattr(exc, "reason", None) or type(exc).__name__,
            )
        return False

    @staticmethod
    def _ended(sock: socket.socket, guard: ConnectionGuard) -> None:
        with contextlib.suppress(OSError, ValueError):
            sock.close()
        if not guard.reported:
            assoc = guard.assoc
            if not guard.association_requested:
                guard.report(
                    20,  # INFO
                    "connection closed without an association request",
                    bytes_received=guard.framer.received,
                    seconds=round(time.monotonic() - guard.connection.accepted_at, 3),
                )
            elif assoc is not None and getattr(assoc, "is_aborted", False):
                guard.report(20, "association aborted")
        guard.finish()


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the guards above.

    Made by ``AE.make_server(..., server_class=GuardedAssociationServer, policy=...)``;
    it is not in the AE's own server list, so ``AE.shutdown()`` does not stop it:
    :meth:`shutdown` does (and leaves open associations running).
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        policy: PortPolicy,
    ) -> None:
        if ssl_context is not None:
            raise ValueError("give the TLS context in the PortPolicy")
        self.policy = policy
        self._stopped = threading.Event()
        self._serving = threading.Event()
        self._guards: set[ConnectionGuard] = set()
        self._guards_lock = threading.Lock()
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            None,
            evt_handlers=evt_handlers,
            request_handler=GuardedRequestHandler,
        )

    @property
    def tls(self) -> bool:
        return self.policy.tls_context is not None

    def process_request(self, request: Any, client_address: Any) -> None:
        address, port = str(client_address[0]), int(client_address[1])
        opened = self.policy.limits.open(address, port, self.tls)
        if isinstance(opened, Refusal):
            log.warning(
                "connection refused",
                extra={"peer": f"{address}:{port}", "tls": self.tls, "reason": opened.value},
            )
            self.shutdown_request(request)
            return
        guard = ConnectionGuard(opened, self.policy)
        with self._guards_lock:
            self._guards.add(guard)
        try:
            guarded = guard_socket(request, guard)
        except (OSError, ValueError) as exc:
            guard.report(30, "connection lost as it was accepted", reason=type(exc).__name__)
            guard.finish()
            self.forget(guard)
            self.shutdown_request(request)
            return
        try:
            super().process_request(guarded, client_address)
        except Exception:
            guard.finish()
            self.forget(guard)
            self.shutdown_request(guarded)
            raise

    def forget(self, guard: ConnectionGuard) -> None:
        with self._guards_lock:
            self._guards.discard(guard)

    def end_unassociated(self) -> int:
        """Close every connection that has not sent a whole association request (they
        hold no instances); how many were closed."""
        with self._guards_lock:
            guards = list(self._guards)
        return sum(guard.end_unassociated() for guard in guards)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving.set()
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket (idempotent); open associations
        keep running."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._serving.is_set():
            socketserver.BaseServer.shutdown(self)
        self.server_close()

    def start(self, name: str) -> None:
        """Serve in a daemon thread."""
        threading.Thread(target=self.serve_forever, name=name, daemon=True).start()
        self._serving.wait(5)


def bind_association(event: Any) -> None:
    """``EVT_CONN_OPEN``: the connection's guard learns its Association."""
    guard = guard_of(event.assoc)
    if guard is not None:
        guard.assoc = event.assoc


def admit_association(event: Any) -> bool:
    """``EVT_REQUESTED`` (after the AE title checks): a place among ``max-associations``,
    else A-ASSOCIATE-RJ (transient, local limit exceeded). False when rejected."""
    assoc = event.assoc
    if assoc.is_rejected or assoc.is_aborted:
        return False
    guard = guard_of(assoc)
    if guard is None or guard.policy.limits.admit(guard.connection):
        return True
    primitive = assoc.requestor.primitive
    guard.report(
        30,
        "association rejected: max-associations reached",
        called_ae_title=str(primitive.called_ae_title).strip(),
        calling_ae_title=str(primitive.calling_ae_title).strip(),
        max_associations=guard.policy.limits.max_associations,
    )
    assoc.acse.send_reject(0x02, 0x03, 0x02)
    assoc.kill()
    return False


def dismiss_association(event: Any) -> None:
    """``EVT_RELEASED`` / ``EVT_ABORTED``: the association's place is free."""
    guard = guard_of(event.assoc)
    if guard is not None:
        guard.policy.limits.dismiss(guard.connection)
