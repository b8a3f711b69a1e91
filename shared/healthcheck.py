"""Health checks for containers and pods: ``python -m shared.healthcheck CHECK [ARG]``.

Exit status 0 when healthy, 1 (with the reason on stderr) when not. Standard library only,
so a check costs a fraction of a second and imports none of the services.

- ``listening PORT``: something accepts TCP connections on 127.0.0.1:PORT.
- ``dicom PORT``: the DICOM SCP on 127.0.0.1:PORT answers an A-ASSOCIATE-RQ (accepted, or
  rejected for any reason: it answers), and the association is released properly. More than
  a TCP connection: it shows the SCP answers associations. (Plain pynetdicom also counts a
  connection that never associates as an active association until its ARTIM timer
  expires; TCP probes every few seconds exhausted ``max-associations`` that way before the
  receiver freed such connections at once.) The called AE title is the first of
  ``dicom > scp > ae-titles`` in ``SERIESFLOW_CONFIG`` (``HEALTHCHECK`` when there is none);
  the calling one is ``HEALTHCHECK``.
- ``http URL``: ``GET URL`` answers 200 (the config API's ``/health``).
- ``broker``: this container holds an established connection to the AMQP port of
  ``SERIESFLOW_AMQP_URL`` (the parser, selector and exporter consume while connected, and
  reconnect with backoff while not). Reads ``/proc/net/tcp`` and ``/proc/net/tcp6`` of the
  container's own network namespace.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

_ESTABLISHED = "01"
_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def listening(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> str | None:
    """None when ``host:port`` accepts a connection, else why not."""
    try:
        socket.create_connection((host, port), timeout).close()
    except OSError as exc:
        return f"nothing accepts connections on {host}:{port}: {exc}"
    return None


def called_ae_title(config_path: str | None) -> str:
    """The first SCP AE title of a configuration file, else ``HEALTHCHECK``."""
    try:
        import yaml

        config = yaml.safe_load(Path(config_path or "").read_text(encoding="utf-8"))
        return str(config["dicom"]["scp"]["ae-titles"][0]["ae-title"])
    except Exception:
        return "HEALTHCHECK"


def dicom_answers(
    port: int, called: str, host: str = "127.0.0.1", timeout: float = 5.0
) -> str | None:
    """None when the SCP at ``host:port`` answers an association request, else why not."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="HEALTHCHECK")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    association = ae.associate(host, port, ae_title=called)
    if association.is_established:
        association.release()
        return None
    if association.is_rejected:
        return None
    return f"no answer to an A-ASSOCIATE-RQ on {host}:{port}"


def http_ok(url: str, timeout: float = 3.0) -> str | None:
    """None when ``GET url`` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except (OSError, urllib.error.URLError) as exc:
        return f"GET {url} failed: {exc}"
    return None if status == 200 else f"GET {url} answered {status}"


def amqp_port(url: str) -> int:
    """The TCP port an AMQP URL connects to (5672, or 5671 for amqps, unless given)."""
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.port
    return 5671 if parts.scheme == "amqps" else 5672


def established_to(port: int, tables: Iterable[str]) -> bool:
    """Whether a /proc/net/tcp-format table lists an established connection to ``port``."""
    wanted = f":{port:04X}"
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[2].endswith(wanted) and fields[3] == _ESTABLISHED:
                return True
    return False


def broker_connected(url: str) -> str | None:
    """None when this network namespace has an established connection to the broker's port."""
    port = amqp_port(url)
    tables = [p.read_text() for p in _TCP_TABLES if p.exists()]
    if established_to(port, tables):
        return None
    return f"no established connection to the broker's port {port}"


def run(argv: list[str]) -> int:
    usage = "usage: python -m shared.healthcheck listening PORT | dicom PORT | http URL | broker"
    problem: str | None
    if len(argv) == 2 and argv[0] == "listening" and argv[1].isdigit():
        problem = listening(int(argv[1]))
    elif len(argv) == 2 and argv[0] == "dicom" and argv[1].isdigit():
        called = called_ae_title(os.environ.get("SERIESFLOW_CONFIG"))
        problem = dicom_answers(int(argv[1]), called)
    elif len(argv) == 2 and argv[0] == "http":
        problem = http_ok(argv[1])
    elif argv == ["broker"]:
        problem = broker_connected(
            os.environ.get("SERIESFLOW_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
        )
    else:
        print(usage, file=sys.stderr)
        return 2
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
