"""Who may hold a connection or an association on the DICOM port, before any authentication.

* **Connections** (TCP, TLS or not) are counted from ``accept`` until the association
  thread serving them has ended: at most ``max-connections`` in all and
  ``max-connections-per-address`` from one peer address. Past either, the connection is
  closed at once, before a byte is read.
* **Associations** are counted from the moment their A-ASSOCIATE-RQ has been received
  whole and passed the AE title and source checks, until they are released or aborted or
  their connection ends: at most ``max-associations``. A connection that never sends a
  whole request (idle, slow, garbage) therefore never takes an association's place.

Pure bookkeeping, thread-safe; :mod:`services.receiver.transport` applies it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum


class Refusal(Enum):
    """Why a connection was closed as it arrived."""

    TOO_MANY_CONNECTIONS = "max-connections reached"
    TOO_MANY_FROM_ADDRESS = "max-connections-per-address reached for this address"


@dataclass(eq=False)
class Connection:
    """One accepted connection, from ``accept`` until its association thread ended."""

    address: str
    port: int
    tls: bool = False
    accepted_at: float = field(default_factory=time.monotonic)
    admitted: bool = False
    """It holds one of the ``max-associations`` places."""

    @property
    def peer(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Usage:
    """A snapshot of the counters."""

    connections: int
    associations: int
    by_address: dict[str, int]


class ConnectionLimits:
    """The counters behind ``max-connections``, ``max-connections-per-address`` and
    ``max-associations`` (one object per receiver, shared by its plain and TLS ports)."""

    def __init__(self, max_connections: int, max_per_address: int, max_associations: int) -> None:
        if min(max_connections, max_per_address, max_associations) < 1:
            raise ValueError("connection and association limits must be at least 1")
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.max_associations = max_associations
        self._lock = threading.Lock()
        self._by_address: Counter[str] = Counter()
        self._connections = 0
        self._associations = 0

    def open(self, address: str, port: int, tls: bool = False) -> Connection | Refusal:
        """Count a new connection from ``address``, or say why it is refused."""
        with self._lock:
            if self._connections >= self.max_connections:
                return Refusal.TOO_MANY_CONNECTIONS
            if self._by_address[address] >= self.max_per_address:
                return Refusal.TOO_MANY_FROM_ADDRESS
            self._connections += 1
            self._by_address[address] += 1
        return Connection(address, port, tls)

    def admit(self, connection: Connection) -> bool:
        """Give ``connection``'s association a place, if one is free (idempotent)."""
        with self._lock:
            if connection.admitted:
                return True
            if self._associations >= self.max_associations:
                return False
            self._associations += 1
            connection.admitted = True
            return True

    def dismiss(self, connection: Connection) -> None:
        """``connection``'s association ended (released, aborted): its place is free."""
        with self._lock:
            if connection.admitted:
                connection.admitted = False
                self._associations -= 1

    def close(self, connection: Connection) -> None:
        """``connection`` ended; call once per :meth:`open` that returned it."""
        self.dismiss(connection)
        with self._lock:
            self._connections -= 1
            self._by_address[connection.address] -= 1
            if self._by_address[connection.address] <= 0:
                del self._by_address[connection.address]

    def usage(self) -> Usage:
        with self._lock:
            return Usage(self._connections, self._associations, dict(self._by_address))
