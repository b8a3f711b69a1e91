"""Free loopback ports below the kernel's ephemeral range, for local stacks and tests.

A port the kernel picks (bind to port 0) is an ephemeral one: between the pick and the
server's own bind, any outgoing connection of the machine may take it as its local port
(a stack's parser connecting to RabbitMQ took its receiver's port once, and the receiver
could not listen for two minutes). Ports below ``ip_local_port_range`` are never given to
outgoing connections, so a port picked there stays free until its server binds it.

``python -m shared.ports N`` prints N distinct ones (``scripts/stack.sh`` uses it); the
integration tests call :func:`free_port`.
"""

from __future__ import annotations

import random
import socket
import sys
from collections.abc import MutableSet
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_SPAN = 12_000
"""How many ports below the ephemeral range are picked from."""


def ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (32768 if it does not say)."""
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(given: MutableSet[int]) -> int:
    """A loopback port free now, below the ephemeral range and not in ``given``; it is
    added to ``given`` (so that two servers started together never get the same one)."""
    high = ephemeral_low() - 1
    low = max(1024, high - _SPAN)
    for _ in range(500):
        port = random.randint(low, high)
        if port in given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        given.add(port)
        return port
    raise RuntimeError(f"no free port between {low} and {high}")


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 1
    given: set[int] = set()
    print(*(free_port(given) for _ in range(count)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
