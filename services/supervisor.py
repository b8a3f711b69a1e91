"""``seriesflow up``: every service as its own process on one machine.

Each service runs as ``python -m seriesflow <service>`` with the same environment, so it
reads the same SERIESFLOW_* settings. A process that exits unexpectedly is restarted with
exponential backoff (1 s doubling to 60 s, reset after a minute of running). SIGTERM or
SIGINT stops every process (SIGTERM first, SIGKILL after a grace period).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from shared.logs import get_logger

SERVICES = ("receiver", "parser", "selector", "exporter", "config-api")
log = get_logger("supervisor")


@dataclass
class _Child:
    service: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 1.0
    restarts: int = 0
    next_start: float = field(default=0.0)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"


class Supervisor:
    def __init__(self, replicas: dict[str, int], grace_seconds: float = 35.0) -> None:
        # grace_seconds: SIGTERM to SIGKILL; longer than the receiver's drain (25 s), as
        # Kubernetes' terminationGracePeriodSeconds should be.
        self.children = [
            _Child(service, i) for service, count in replicas.items() for i in range(1, count + 1)
        ]
        self.grace_seconds = grace_seconds

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen([sys.executable, "-m", "seriesflow", child.service])
        child.started = time.monotonic()
        log.info("service started", extra={"service": child.name, "pid": child.process.pid})

    def run(self, stop: threading.Event) -> None:
        for child in self.children:
            self._start(child)
        try:
            while not stop.wait(0.5):
                now = time.monotonic()
                for child in self.children:
                    process = child.process
                    if process is not None and process.poll() is None:
                        if now - child.started > 60:
                            child.backoff = 1.0
                        continue
                    if process is not None:
                        log.warning(
                            "service exited, restarting",
                            extra={
                                "service": child.name,
                                "exit_status": process.returncode,
                                "in_seconds": child.backoff,
                            },
                        )
                        child.process = None
                        child.next_start = now + child.backoff
                        child.backoff = min(child.backoff * 2, 60.0)
                        child.restarts += 1
                    elif now >= child.next_start:
                        self._start(child)
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.grace_seconds
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
