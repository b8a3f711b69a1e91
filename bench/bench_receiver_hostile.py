"""The receiver under hostile peers: does a modality still store, and what does it cost?

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_receiver_hostile.py [--idle 50] [--oversized 3] [--slices 24]

The receiver runs as its own process (``python -m seriesflow receiver``, default settings,
log level INFO). While ``--idle`` connections hold a partial A-ASSOCIATE-RQ open (from
127.0.0.2-127.0.0.11, as other hosts would) and ``--oversized`` connections each announce
an A-ASSOCIATE-RQ of 0xFFFFFFF0 bytes and push zeros after it (at most 64 MiB each, for
at most 20 s), dcmtk's ``storescu`` sends a ``--slices``-image CT series (512x512) from
127.0.0.1. Printed: the receiver's RSS before, at its highest during and after the
attack (``/proc/PID/status`` VmRSS, sampled every 20 ms, and VmHWM), the store's time
with and without the attack, and how many bytes the oversized connections got in.

Exit status 0 when the store succeeded with every attacker still connected and the peak
RSS stayed under ``--rss-limit-mb`` (300), else 1. Results also go to
``bench/results/receiver_hostile.json``. All traffic stays on 127.0.0.0/8, bounded in
count and time.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _common import process_mib, write_results
from bench_service import bench_settings

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.samples import write_ct_series  # noqa: E402
from tests.integration.infra import (  # noqa: E402
    dcmtk,
    dcmtk_available,
    free_port,
    rabbitmq_vhost,
    start_seaweedfs,
    wait_for_port,
)
from tests.integration.processes import ServiceProcess, service_environment  # noqa: E402

RESULTS = REPO / "bench" / "results" / "receiver_hostile.json"
HUGE = 0xFFFFFFF0
PUSH_LIMIT = 64 << 20
PUSH_SECONDS = 20.0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    value = process_mib(pid, field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/{pid}/status")
    return value


class Sampler(threading.Thread):
    """The highest VmRSS seen while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.done.wait(0.02)

    def stop(self) -> float:
        self.done.set()
        self.join(5)
        return self.peak


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections (5 per source address) each holding a partial request."""
    partial = struct.pack(">BBL", 0x01, 0, 200) + struct.pack(">HH", 1, 0) + b"SERIESFLOW"
    sockets = []
    for index in range(count):
        sock = connect_from(f"127.0.0.{2 + index // 5}", port)
        sock.sendall(partial)
        sockets.append(sock)
    return sockets


def still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


def push_oversized(port: int, source: str, sent: list[int]) -> None:
    """An A-ASSOCIATE-RQ header announcing 0xFFFFFFF0 bytes, then zeros while taken."""
    total = 0
    deadline = time.monotonic() + PUSH_SECONDS
    chunk = bytes(1 << 16)
    try:
        with connect_from(source, port) as sock:
            sock.settimeout(2)
            sock.sendall(struct.pack(">BBL", 0x01, 0, HUGE))
            while total < PUSH_LIMIT and time.monotonic() < deadline:
                total += sock.send(chunk)
    except OSError:
        pass
    sent.append(total)


def storescu(port: int, folder: Path) -> tuple[bool, float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "SERIESFLOW", "+sd", "+r",
         "127.0.0.1", str(port), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    return result.returncode == 0, time.perf_counter() - start, result.stdout + result.stderr


def write_config(path: Path, port: int, pipelines: Path) -> None:
    scp = {
        "host": "127.0.0.1",
        "port": port,
        "ae-titles": [{"ae-title": "SERIESFLOW"}],
        "reject-unknown-sources": False,
    }
    path.write_text(
        yaml.safe_dump(
            {
                "dicom": {"scp": scp},
                "pipeline-mappings": [{"name": "bench", "clara-ae-title": "SERIESFLOW"}],
            }
        )
    )
    pipelines.mkdir(parents=True, exist_ok=True)
    (pipelines / "bench.yaml").write_text(yaml.safe_dump({"name": "bench", "image-format": "nii"}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--oversized", type=int, default=3)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--rss-limit-mb", type=float, default=300.0)
    args = parser.parse_args(argv)
    if not args.idle <= 200 or not args.oversized <= 10:
        parser.error("at most 200 idle and 10 oversized connections")
    if not dcmtk_available("storescu"):
        print("dcmtk's storescu is not installed: bash scripts/setup.sh", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-hostile-"))
    s3 = start_seaweedfs(work / "s3")
    try:
        with rabbitmq_vhost() as amqp:
            return run(args, work, s3.endpoint, s3.access_key, s3.secret_key, amqp)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace, work: Path, endpoint: str, access: str, secret: str, amqp: str
) -> int:
    ct = work / "ct"
    write_ct_series(ct, slices=args.slices, size=512, seed=9)
    settings = bench_settings(amqp, endpoint, access, secret, "bench")
    port = free_port()
    config, pipelines = work / "config.yaml", work / "pipelines"
    write_config(config, port, pipelines)
    env = service_environment(settings, config, pipelines)
    env["SERIESFLOW_SPOOL_DIR"] = str(work / "spool")  # not the user's shared default
    logs = work / "logs"
    logs.mkdir()
    receiver = ServiceProcess("receiver", env, logs).start()
    try:
        wait_for_port(port, 60)
        assert receiver.process is not None
        pid = receiver.process.pid
        time.sleep(1.0)
        quiet_ok, quiet_seconds, _ = storescu(port, ct)  # also warms the receiver up
        before = rss_mb(pid)
        sampler = Sampler(pid)
        sampler.start()
        idle = idle_connections(port, args.idle)
        sent: list[int] = []
        pushers = [
            threading.Thread(target=push_oversized, args=(port, "127.0.0.100", sent))
            for _ in range(args.oversized)
        ]
        for pusher in pushers:
            pusher.start()
        ok, seconds, output = storescu(port, ct)
        idle_open = sum(still_open(s) for s in idle)
        for pusher in pushers:
            pusher.join(PUSH_SECONDS + 10)
        during = sampler.stop()
        for sock in idle:
            sock.close()
        time.sleep(2.0)
        after = rss_mb(pid)
        peak = rss_mb(pid, "VmHWM")
        log = receiver.log()
    finally:
        receiver.stop()
    figures: dict[str, Any] = {
        "slices": args.slices,
        "idle_connections": args.idle,
        "idle_still_open_after_store": idle_open,
        "oversized_connections": args.oversized,
        "oversized_bytes_taken": sorted(sent),
        "store_ok": ok,
        "store_seconds": round(seconds, 2),
        "store_seconds_without_attack": round(quiet_seconds, 2) if quiet_ok else None,
        "rss_mb_before": round(before, 1),
        "rss_mb_peak_during": round(during, 1),
        "rss_mb_after": round(after, 1),
        "rss_mb_high_water_mark": round(peak, 1),
        "rss_limit_mb": args.rss_limit_mb,
        "refused_pdus_logged": log.count("PDU refused"),
    }
    for key, value in figures.items():
        print(f"{key:32} {value}")
    write_results(RESULTS, figures)
    if not ok:
        print(output[-2000:], file=sys.stderr)
    good = ok and idle_open == args.idle and peak < args.rss_limit_mb
    print("PASS" if good else "FAIL")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
