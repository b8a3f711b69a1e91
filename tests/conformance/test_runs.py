"""How the conformance harness starts its runs."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from .cases import child_environment

SPAWN_SECONDS = 3.0


def test_runs_spawned_from_threads_survive_environment_changes() -> None:
    """Runs start on RunStore threads while pytest sets and removes PYTEST_CURRENT_TEST on
    the main thread. Started with the inherited C ``environ``, about one start in fifty
    failed here with ``OSError: [Errno 14] Bad address``; with a copy, none may."""
    failures: list[OSError] = []
    started = [0]
    stop = threading.Event()

    def spawn() -> None:
        while not stop.is_set():
            try:
                subprocess.run(["true"], env=child_environment(), check=False)
            except OSError as exc:
                failures.append(exc)
            started[0] += 1

    spawners = [threading.Thread(target=spawn) for _ in range(2)]
    for spawner in spawners:
        spawner.start()
    name = "SERIESFLOW_TEST_ENVIRONMENT_CHURN"
    deadline = time.monotonic() + SPAWN_SECONDS
    churned = 0
    try:
        while time.monotonic() < deadline:
            os.environ[name] = "x" * (churned % 64)
            scratch = [bytearray(64) for _ in range(32)]
            del os.environ[name]
            scratch.clear()
            churned += 1
    finally:
        stop.set()
        for spawner in spawners:
            spawner.join()
        os.environ.pop(name, None)
    assert started[0] > 20, "too few processes started to tell"
    assert not failures, f"{len(failures)} of {started[0]} starts failed: {failures[0]!r}"
