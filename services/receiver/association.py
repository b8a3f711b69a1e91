"""Associations: their IDs, who may open one, and what an open one has received.

Acceptance (checked when the A-ASSOCIATE-RQ arrives, before negotiation):

* the *called* AE title must be one of ours, else A-ASSOCIATE-RJ
  (rejected-permanent, service-user, "called-AE-title-not-recognized");
* with ``reject-unknown-sources``, the *calling* AE title and the peer's IP address must
  together match an entry of ``sources`` (``host-ip`` may be a host name, resolved),
  else A-ASSOCIATE-RJ (rejected-permanent, service-user, "calling-AE-title-not-recognized").

Association IDs are UUIDv7 in 32 lowercase hex digits: they sort by creation time and
carry it, so an ``incoming/<association_id>/`` prefix tells its own age without a lookup.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from services.receiver.job import DuplicateConflict, Group
from shared.config import ScpConfig
from shared.manifest import InstanceRef

Resolver = Callable[[str], set[str]]


def new_association_id(now: float | None = None) -> str:
    """A UUIDv7 (RFC 9562) as 32 lowercase hex digits: 48-bit Unix milliseconds first."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = secrets.randbits(74)
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    return f"{value:032x}"


def association_created(association_id: str) -> float | None:
    """When a :func:`new_association_id` ID was made (Unix seconds); None for other IDs."""
    if len(association_id) != 32 or association_id[12] != "7":
        return None
    try:
        variant = int(association_id[16], 16) >> 2
        millis = int(association_id[:12], 16)
    except ValueError:
        return None
    return millis / 1000 if variant == 0b10 else None


class Rejection(Enum):
    """Why an association request is refused: (result, source, diagnostic), PS3.8 9.3.4."""

    CALLED_AE_TITLE = (0x01, 0x01, 0x07, "called AE title not recognised")
    CALLING_AE_TITLE = (0x01, 0x01, 0x03, "calling AE title not recognised")

    @property
    def result(self) -> int:
        return int(self.value[0])

    @property
    def source(self) -> int:
        return int(self.value[1])

    @property
    def diagnostic(self) -> int:
        return int(self.value[2])

    @property
    def reason(self) -> str:
        return str(self.value[3])


def resolve_host(host: str) -> set[str]:
    """The IP addresses of ``host`` (itself if it is one); empty if it does not resolve."""
    try:
        return {_normal_ip(host)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {_normal_ip(str(info[4][0])) for info in infos}


def _normal_ip(address: str) -> str:
    """``address`` in canonical form; an IPv4-mapped IPv6 address becomes IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class Source:
    host: str
    ae_title: str


class AssociationPolicy:
    """Decides whether an association request is accepted (see the module docstring).

    Host names are resolved when first needed and again after ``resolve_ttl`` seconds,
    so a source whose address changes is recognised without a restart.
    """

    def __init__(
        self,
        ae_titles: Iterable[str],
        sources: Iterable[Source],
        reject_unknown_sources: bool,
        *,
        resolver: Resolver = resolve_host,
        resolve_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ae_titles = frozenset(ae_titles)
        self.sources = tuple(sources)
        self.reject_unknown_sources = reject_unknown_sources
        self._resolver = resolver
        self._resolve_ttl = resolve_ttl
        self._clock = clock
        self._resolved: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, scp: ScpConfig, resolver: Resolver = resolve_host) -> AssociationPolicy:
        return cls(
            (a.ae_title for a in scp.ae_titles),
            (Source(s.host_ip, s.ae_title) for s in scp.sources),
            scp.reject_unknown_sources,
            resolver=resolver,
        )

    def check(self, called: str, calling: str, peer_ip: str) -> Rejection | None:
        """None to accept, else why the request is rejected."""
        if called.strip() not in self.ae_titles:
            return Rejection.CALLED_AE_TITLE
        if not self.reject_unknown_sources:
            return None
        calling = calling.strip()
        try:
            peer = _normal_ip(peer_ip)
        except ValueError:
            return Rejection.CALLING_AE_TITLE
        for source in self.sources:
            if source.ae_title == calling and peer in self._addresses(source.host):
                return None
        return Rejection.CALLING_AE_TITLE

    def _addresses(self, host: str) -> set[str]:
        now = self._clock()
        with self._lock:
            cached = self._resolved.get(host)
            if cached is not None and now - cached[0] < self._resolve_ttl:
                return cached[1]
        addresses = self._resolver(host)
        with self._lock:
            self._resolved[host] = (now, addresses)
        return addresses


@dataclass
class OpenAssociation:
    """An accepted association and the instances stored for it so far."""

    association_id: str
    called_ae_title: str
    calling_ae_title: str
    calling_host: str
    started: float = field(default_factory=time.time)
    instances: dict[str, InstanceRef] = field(default_factory=dict)  # by SOPInstanceUID
    stored_at: dict[str, float] = field(default_factory=dict)  # by SOPInstanceUID
    duplicates: list[DuplicateConflict] = field(default_factory=list)
    store_answered: bool = False
    """The object store answered a check on this association (its first instance)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def group(self) -> Group:
        """Associations with the same group may form one job (AE titles with a timeout)."""
        return ("pair", self.called_ae_title, self.calling_ae_title)


class OpenAssociations:
    """The accepted associations still open, by pynetdicom ``Association`` (thread-safe)."""

    def __init__(self) -> None:
        self._open: dict[Any, OpenAssociation] = {}
        self._lock = threading.Lock()

    def open(self, assoc: Any, association: OpenAssociation) -> None:
        with self._lock:
            self._open[assoc] = association

    def get(self, assoc: Any) -> OpenAssociation | None:
        with self._lock:
            return self._open.get(assoc)

    def close(self, assoc: Any) -> OpenAssociation | None:
        """Forget ``assoc``; its state the first time, None after (ends are handled once)."""
        with self._lock:
            return self._open.pop(assoc, None)

    def ended(self) -> list[Any]:
        """Associations whose thread has finished without a release or abort being seen."""
        with self._lock:
            return [assoc for assoc in self._open if not assoc.is_alive()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
