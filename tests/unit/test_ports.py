"""Free ports below the kernel's ephemeral range (shared.ports)."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared import ports

REPO = Path(__file__).resolve().parents[2]


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    given: set[int] = set()
    picked = [ports.free_port(given) for _ in range(20)]
    assert len(set(picked)) == 20 and set(picked) == given
    assert all(1024 <= port < ports.ephemeral_low() for port in picked)
    for port in picked:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # free indeed


def test_a_port_given_already_is_not_given_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([40000, 40000, 40001])
    monkeypatch.setattr(ports, "ephemeral_low", lambda: 40002)
    monkeypatch.setattr(random, "randint", lambda low, high: next(draws))
    given = {40000}
    assert ports.free_port(given) == 40001 and given == {40000, 40001}


def test_the_range_falls_back_when_the_kernel_does_not_say(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ports, "_RANGE", tmp_path / "missing")
    assert ports.ephemeral_low() == 32768


def test_the_command_prints_as_many_distinct_ports_as_asked() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shared.ports", "7"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    printed = [int(word) for word in done.stdout.split()]
    assert len(printed) == 7 and len(set(printed)) == 7
