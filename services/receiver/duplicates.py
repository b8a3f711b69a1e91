"""The same SOP Instance UID received twice for one job: what is kept, and the audit.

An AE title's ``duplicates`` policy decides what happens when a SOP Instance UID arrives
again *with different content* (the data set bytes' SHA-256 differs) for a job still being
formed, on the same association or on another association of the same job:

===============  ==========================================================================
``keep-first``   the new copy is not stored; answered Success (Clara's
                 ``overwrite-same-instance: false``, the default)
``overwrite``    the new copy is stored and used by the job (Clara's
                 ``overwrite-same-instance: true``)
``reject``       the new copy is not stored; answered *Duplicate SOP Instance* (0x0111)
===============  ==========================================================================

Every conflict is logged (a warning with both associations and digests) and recorded in
the association record of the association that brought the new copy
(:class:`services.receiver.job.DuplicateConflict`). An identical copy is no conflict: on
the same association it is answered Success and not stored again; on another association
it is stored like any instance (either copy serves). Digests are computed only when a SOP
Instance UID arrives a second time (the first copy's from its spooled or stored bytes, once:
the index keeps it), so the common case, every instance once, costs no hashing.

:class:`InstanceIndex` remembers, per group being formed (see :mod:`services.receiver.job`),
which association stored each SOP Instance UID first and with what digest. A group is
forgotten when its job is released, an association's entries when it is aborted.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from enum import StrEnum

from services.receiver.job import Group
from shared.config import AETitleConfig


class DuplicatePolicy(StrEnum):
    KEEP_FIRST = "keep-first"
    OVERWRITE = "overwrite"
    REJECT = "reject"


def policy_of(config: AETitleConfig) -> DuplicatePolicy:
    """The AE title's ``duplicates``, else what ``overwrite-same-instance`` says."""
    explicit = getattr(config, "duplicates", None)
    if explicit:
        return DuplicatePolicy(explicit)
    if config.overwrite_same_instance:
        return DuplicatePolicy.OVERWRITE
    return DuplicatePolicy.KEEP_FIRST


def digest(data_set: bytes | memoryview) -> str:
    return hashlib.sha256(data_set).hexdigest()


@dataclass(frozen=True)
class Seen:
    """The copy of an instance the job has so far: its association, its data set's digest
    (``""`` until a second copy needs it: it is then computed from the stored copy) and
    its object key."""

    association_id: str
    digest: str
    key: str = ""


class InstanceIndex:
    """SOP Instance UIDs stored per group still being formed (thread-safe)."""

    def __init__(self) -> None:
        self._groups: dict[Group, dict[str, Seen]] = {}
        self._lock = threading.Lock()

    def seen(self, group: Group, sop_instance_uid: str) -> Seen | None:
        with self._lock:
            return self._groups.get(group, {}).get(sop_instance_uid)

    def stored(self, group: Group, sop_instance_uid: str, seen: Seen, replace: bool) -> None:
        """Remember a stored copy: as the first, or (``replace``) instead of the earlier."""
        with self._lock:
            entries = self._groups.setdefault(group, {})
            if replace or sop_instance_uid not in entries:
                entries[sop_instance_uid] = seen

    def remember_digest(self, group: Group, sop_instance_uid: str, seen: Seen) -> None:
        """Keep the digest just computed for the copy ``seen``, if that copy is still the
        job's: a third copy is then compared without reading the first again."""
        with self._lock:
            entries = self._groups.get(group, {})
            held = entries.get(sop_instance_uid)
            if (
                held is not None
                and not held.digest
                and (held.association_id, held.key) == (seen.association_id, seen.key)
            ):
                entries[sop_instance_uid] = seen

    def forget_group(self, group: Group) -> None:
        with self._lock:
            self._groups.pop(group, None)

    def forget_association(self, association_id: str) -> None:
        with self._lock:
            for group, entries in list(self._groups.items()):
                for uid in [u for u, s in entries.items() if s.association_id == association_id]:
                    del entries[uid]
                if not entries:
                    del self._groups[group]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._groups.values())
