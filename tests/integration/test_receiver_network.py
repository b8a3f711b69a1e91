"""The DICOM port against hostile peers, before any authentication (issue 9, #2 and #3).

Raw sockets play the attackers (partial A-ASSOCIATE-RQ, silence, PDUs announcing
0xFFFFFFF0 bytes, a PDU that never finishes), dcmtk's echoscu/storescu and pynetdicom the
well-behaved modalities. Attackers connect from other loopback addresses (127.0.0.2...)
than the modality (127.0.0.1), as they would from other hosts. Every loop is bounded in
count and time, and all traffic stays on 127.0.0.1/8.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from shared.samples import write_ct_series
from shared.settings import ServiceSettings

from .infra import dcmtk_available, free_port
from .test_receiver import echoscu, running, storescu, wait_until, write_config

pytestmark = pytest.mark.skipif(not dcmtk_available("storescu"), reason="dcmtk is not installed")

HUGE = 0xFFFFFFF0
TRANSPORT_LOGGER = "seriesflow.receiver.transport"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@contextmanager
def recording(name: str, level: int = logging.INFO) -> Iterator[Records]:
    """What logger ``name`` logs at ``level`` (INFO: the default level)."""
    logger = logging.getLogger(name)
    handler = Records()
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


@pytest.fixture
def transport_log() -> Iterator[Records]:
    with recording(TRANSPORT_LOGGER) as records:
        yield records


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def partial_association_request() -> bytes:
    """The first bytes of an A-ASSOCIATE-RQ announcing 200 bytes, and no more."""
    return struct.pack(">BBL", 0x01, 0, 200) + struct.pack(">HH", 1, 0) + b"SERIESFLOW"


@contextmanager
def idle_attackers(port: int, sources: list[str], per_source: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        sockets = []
        for source in sources:
            for _ in range(per_source):
                sock = stack.enter_context(connect_from(source, port))
                sock.sendall(partial_association_request())
                sockets.append(sock)
        yield sockets


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """The receiver closed ``sock`` (EOF, reset, or an A-ABORT then EOF) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def push(sock: socket.socket, header: bytes, limit: int, seconds: float) -> int:
    """Send ``header`` then zeros until the peer stops taking them; the bytes sent.

    When ``sock`` is an association's of our own, pynetdicom's reactor closes it on the
    peer's A-ABORT, maybe while we push (EBADF): the peer stopped taking them too."""
    sock.settimeout(2)
    sent = 0
    chunk = bytes(65536)
    deadline = time.monotonic() + seconds
    try:
        sock.sendall(header)
        while sent < limit and time.monotonic() < deadline:
            sent += sock.send(chunk)
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
    return sent


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return sorted(write_ct_series(tmp_path / "ct", slices=4, size=32))


def verification_association(port: int) -> Any:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    ae.acse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="SERIESFLOW")
    assert assoc.is_established
    return assoc


# -- #2: idle and slow connections --------------------------------------------------------


def test_idle_partial_requests_neither_block_the_port_nor_stay_open(
    settings: ServiceSettings, tmp_path: Path, ct: list[Path], transport_log: Records
) -> None:
    """20 connections that send a partial A-ASSOCIATE-RQ and nothing more: echo and store
    still work (today: 'Local Limit Exceeded' for as long as they are open), and each is
    closed at the ARTIM time, logged with its address."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port)
    sources = [f"127.0.0.{n}" for n in range(2, 7)]
    with running(settings, config, dicom_acse_timeout_seconds=12.0) as rx:
        with idle_attackers(port, sources, per_source=4) as attackers:
            echo = echoscu(port)
            assert echo.returncode == 0, echo.stdout + echo.stderr
            stored = storescu(port, ct)
            assert stored.returncode == 0, stored.stdout + stored.stderr
            assert not any(closed_by_peer(s, timeout=0.01) for s in attackers), (
                "served while every attacker was still connected"
            )
            assert all(closed_by_peer(s, timeout=16.0) for s in attackers)
        wait_until(lambda: rx.ae is not None and not _acceptors(rx), 10, "acceptors ended")
    timed_out = transport_log.matching("no complete association request in time")
    assert len(timed_out) == 20
    assert {r.peer.split(":")[0] for r in timed_out} == set(sources)  # type: ignore[attr-defined]


def _acceptors(rx: Any) -> list[Any]:
    return [a for a in rx.ae.active_associations if a.is_acceptor]


def test_connections_per_address_are_limited_and_refusals_logged(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port, max_connections_per_address=3)
    with (
        running(settings, config, dicom_acse_timeout_seconds=10.0),
        idle_attackers(port, ["127.0.0.2"], per_source=3) as held,
    ):
        with connect_from("127.0.0.2", port) as fourth:
            assert closed_by_peer(fourth, timeout=3.0), "the 4th connection was kept"
        echo = echoscu(port)  # another address is not affected
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert not any(closed_by_peer(s, timeout=0.2) for s in held)
    refused = transport_log.matching("connection refused")
    assert len(refused) == 1
    assert refused[0].peer.startswith("127.0.0.2:")  # type: ignore[attr-defined]
    assert "per-address" in refused[0].reason  # type: ignore[attr-defined]


def test_max_associations_counts_associations_only(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port, max_associations=1)
    with (
        running(settings, config, dicom_acse_timeout_seconds=10.0),
        idle_attackers(port, ["127.0.0.2", "127.0.0.3"], per_source=3),
    ):
        held = verification_association(port)  # takes the one place
        try:
            refused = echoscu(port)
            assert refused.returncode != 0
            assert "Local Limit Exceeded" in refused.stdout + refused.stderr
        finally:
            held.release()
        wait_until(lambda: echoscu(port).returncode == 0, 5, "place freed on release")
    assert len(transport_log.matching("max-associations reached")) == 1


def test_stop_accepting_closes_connections_without_an_association_only(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    """For a drain: the listening port closes, connections that never sent a whole
    association request are closed at once (not after ARTIM), an open association goes on."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port)
    with (
        running(settings, config, dicom_acse_timeout_seconds=30.0) as rx,
        idle_attackers(port, ["127.0.0.2", "127.0.0.3"], per_source=3) as idle,
    ):
        assoc = verification_association(port)
        try:
            rx._server.stop_accepting()
            assert all(closed_by_peer(s, timeout=3.0) for s in idle)
            wait_until(lambda: len(_acceptors(rx)) == 1, 5, "only the association runs")
            assert assoc.send_c_echo().Status == 0x0000
            with pytest.raises(OSError):
                connect_from("127.0.0.4", port).close()
        finally:
            assoc.release()
    assert len(transport_log.matching("the receiver is stopping")) == 6


def test_a_refused_connection_frees_its_place_at_once(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port, max_connections_per_address=1)
    with running(settings, config, dicom_acse_timeout_seconds=30.0):
        for _ in range(3):
            with connect_from("127.0.0.2", port) as sock:
                sock.sendall(struct.pack(">BBL", 0x01, 0, HUGE))
                assert closed_by_peer(sock, timeout=3)
        wait_until(lambda: echoscu_from_one_place(port), 5, "the address's one place is free again")


def echoscu_from_one_place(port: int) -> bool:
    """A whole C-ECHO association from 127.0.0.2 (pynetdicom, bound to that address)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SERIESFLOW", bind_address=("127.0.0.2", 0))
    if not assoc.is_established:
        return False
    try:
        return bool(assoc.send_c_echo().Status == 0x0000)
    finally:
        assoc.release()


def test_a_peers_abort_is_logged_with_its_address(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port)
    with running(settings, config) as rx:
        verification_association(port).abort()
        wait_until(lambda: not _acceptors(rx), 5, "the aborted association ended")
        wait_until(lambda: bool(transport_log.matching("association aborted")), 5, "logged")
    (aborted,) = transport_log.matching("association aborted")
    assert aborted.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]


def test_a_pdu_that_never_finishes_aborts_the_association(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    """After association, a P-DATA-TF header announcing 100 bytes and 10 of them: the
    receiver aborts at the network timeout (today it waits for the rest forever)."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port)
    with running(settings, config, dicom_network_timeout_seconds=2.0):
        assoc = verification_association(port)
        raw = assoc.dul.socket.socket
        raw.sendall(struct.pack(">BBL", 0x04, 0, 100) + bytes(10))
        wait_until(lambda: assoc.is_aborted, 8, "association aborted by the receiver")
        assoc.abort()
        assert echoscu(port).returncode == 0
    assert len(transport_log.matching("PDU not received whole in time")) == 1


# -- #3: memory bomb ----------------------------------------------------------------------


def test_an_association_request_announcing_4_gib_is_refused_at_its_header(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port)
    with running(settings, config):
        with connect_from("127.0.0.2", port) as sock:
            sent = push(sock, struct.pack(">BBL", 0x01, 0, HUGE), 64 << 20, seconds=10)
            assert sent < 16 << 20, f"{sent} bytes of the announced PDU were taken"
            assert closed_by_peer(sock, timeout=5)
        echo = echoscu(port)
        assert echo.returncode == 0, echo.stdout + echo.stderr
    (refused,) = transport_log.matching("PDU refused")
    assert refused.peer.startswith("127.0.0.2:")  # type: ignore[attr-defined]
    assert f"A-ASSOCIATE-RQ of {HUGE} bytes" in refused.reason  # type: ignore[attr-defined]


def test_a_p_data_tf_longer_than_announced_aborts_the_association(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port, max_pdu_size=65536)
    with running(settings, config):
        assoc = verification_association(port)
        # what A-ASSOCIATE-AC announced is what is enforced
        assert assoc.acceptor.maximum_length == 65536
        raw = assoc.dul.socket.socket
        sent = push(raw, struct.pack(">BBL", 0x04, 0, HUGE), 64 << 20, seconds=10)
        wait_until(lambda: assoc.is_aborted, 5, "association aborted by the receiver")
        assert sent < 16 << 20, f"{sent} bytes of the announced PDU were taken"
        assert echoscu(port).returncode == 0
    (refused,) = transport_log.matching("PDU refused")
    assert f"P-DATA-TF of {HUGE} bytes, more than the 65536" in refused.reason  # type: ignore[attr-defined]


def test_pdus_exactly_as_long_as_announced_are_taken(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    """storescu fills its P-DATA-TF PDUs up to the announced 4096 bytes: all stored."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port, max_pdu_size=4096)
    images = sorted(write_ct_series(tmp_path / "ct64", slices=3, size=64))
    with running(settings, config):
        stored = storescu(port, images)
        assert stored.returncode == 0, stored.stdout + stored.stderr
    assert not transport_log.matching("PDU refused")


def test_unknown_pdu_types_are_refused(
    settings: ServiceSettings, tmp_path: Path, transport_log: Records
) -> None:
    """HTTP sent to the DICOM port: refused at its first 6 bytes, logged."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port)
    with running(settings, config), connect_from("127.0.0.2", port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_peer(sock, timeout=5)
    (refused,) = transport_log.matching("PDU refused")
    assert "unknown PDU type 0x47" in refused.reason  # type: ignore[attr-defined]
