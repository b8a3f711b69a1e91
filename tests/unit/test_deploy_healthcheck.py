"""The health checks of docker-compose.yml and deploy/services (`shared.healthcheck`)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.healthcheck import (
    amqp_port,
    called_ae_title,
    dicom_answers,
    established_to,
    http_ok,
    listening,
    run,
)

# /proc/net/tcp: local 127.0.0.1:40000 -> remote 127.0.0.1:5672 (0x1628), state 01 and 0A.
HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
ESTABLISHED = "   0: 0100007F:9C40 0100007F:1628 01 00000000:00000000 00:00000000 00000000 0\n"
LISTEN = "   1: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0\n"


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("amqp://u:p@rabbitmq:5672/%2F", 5672),
        ("amqp://u:p@rabbitmq/%2F", 5672),
        ("amqps://u:p@broker.example/%2F", 5671),
        ("amqp://u:p@127.0.0.1:5673/vhost", 5673),
    ],
)
def test_amqp_port(url: str, port: int) -> None:
    assert amqp_port(url) == port


def test_established_connection_to_the_port_counts() -> None:
    assert established_to(5672, [HEADER + ESTABLISHED])


def test_a_listening_socket_or_another_port_does_not() -> None:
    assert not established_to(5672, [HEADER + LISTEN])
    assert not established_to(5673, [HEADER + ESTABLISHED])
    assert not established_to(5672, [HEADER])


@pytest.fixture
def server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_listening_and_http(server: int) -> None:
    assert listening(server) is None
    assert http_ok(f"http://127.0.0.1:{server}/health") is None
    assert "503" in str(http_ok(f"http://127.0.0.1:{server}/other"))


def test_nothing_listening_is_unhealthy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
        assert listening(port) is not None
        assert http_ok(f"http://127.0.0.1:{port}/health") is not None


def test_command_line(server: int) -> None:
    ok = [sys.executable, "-m", "shared.healthcheck", "http", f"http://127.0.0.1:{server}/health"]
    assert subprocess.run(ok, capture_output=True, timeout=30).returncode == 0
    bad = subprocess.run(
        [sys.executable, "-m", "shared.healthcheck", "http", f"http://127.0.0.1:{server}/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "unhealthy" in bad.stderr
    assert run(["nonsense"]) == 2


@pytest.fixture
def scp() -> Iterator[tuple[int, Any]]:
    """A pynetdicom SCP (AE title RECEIVER) that allows two associations at once."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="RECEIVER")
    ae.add_supported_context(Verification)
    ae.maximum_associations = 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        yield port, server
    finally:
        server.shutdown()


def _wait_idle(server: Any) -> None:
    deadline = time.monotonic() + 10
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)


def test_dicom_check_releases_its_association(scp: tuple[int, Any]) -> None:
    port, server = scp
    for _ in range(5):  # more than maximum_associations
        assert dicom_answers(port, "RECEIVER") is None
    _wait_idle(server)
    assert not server.active_associations, "the check leaves no association behind"


def test_a_rejected_association_is_an_answer(scp: tuple[int, Any]) -> None:
    port, _ = scp
    assert dicom_answers(port, "NOT-THIS-AE") is None


def test_bare_tcp_connections_hold_associations(scp: tuple[int, Any]) -> None:
    """Why the receiver's check is not a TCP connection: each holds an association slot."""
    port, server = scp
    for _ in range(3):
        assert listening(port) is None
    time.sleep(0.5)
    assert len(server.active_associations) >= 2


def test_no_scp_is_unhealthy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert dicom_answers(port, "RECEIVER", timeout=2) is not None


def test_called_ae_title_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("dicom:\n  scp:\n    ae-titles:\n      - ae-title: SERIESFLOW\n")
    assert called_ae_title(str(config)) == "SERIESFLOW"
    assert called_ae_title(str(tmp_path / "missing.yaml")) == "HEALTHCHECK"
    assert called_ae_title(None) == "HEALTHCHECK"
