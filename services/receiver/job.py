"""Jobs: which released associations form one, and when it is released.

* An AE title with ``timeout: 0``: each released association is a job of its own.
* With ``timeout: T`` > 0: released associations with the same called and calling AE
  titles are grouped until no instance arrived on any association of that pair for ``T``
  seconds; then the group is one job.
* An association with no stored instance starts no job; an aborted one never does.

Job IDs are derived from the IDs of the associations that form the job, so releasing the
same job again (after a crash) gives the same job ID, manifest key and event ID.

When two associations of one job hold the same SOP Instance UID, ``overwrite-same-instance``
decides: the later copy replaces the earlier one, or the first is kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, field_validator

from shared import keys
from shared.events import event_id
from shared.manifest import InstanceRef, JobManifest

Group = tuple[str, str]  # (called AE title, calling AE title)


def job_id_for(association_ids: Iterable[str]) -> str:
    """The job ID of the job that these associations form (order does not matter)."""
    return event_id("job", *sorted(association_ids))


class AssociationRecord(BaseModel):
    """A released association, stored at :func:`shared.keys.association_record` on release.

    ``job_id`` is set once the association is given to a job (before the manifest is
    written) and ``published`` once ``job.received`` was confirmed by the broker. A record
    marks its ``incoming/`` prefix as released: orphan cleanup never touches it.
    """

    model_config = ConfigDict(extra="ignore")

    association_id: str
    called_ae_title: str
    calling_ae_title: str
    calling_host: str
    released_at: datetime
    instances: list[InstanceRef]
    job_id: str | None = None
    published: bool = False

    @field_validator("association_id")
    @classmethod
    def _id(cls, value: str) -> str:
        return keys.validate_id(value, "association id")

    @property
    def group(self) -> Group:
        return (self.called_ae_title, self.calling_ae_title)


def merge_instances(
    records: Iterable[AssociationRecord], overwrite: bool
) -> tuple[list[InstanceRef], list[str]]:
    """The job's instances in arrival order, and the keys of copies the job does not use.

    Records are taken in release order; a SOP Instance UID seen again replaces the earlier
    copy (``overwrite``) or is dropped (first kept).
    """
    kept: dict[str, InstanceRef] = {}
    unused: list[str] = []
    for record in records:
        for ref in record.instances:
            earlier = kept.get(ref.sop_instance_uid)
            if earlier is None:
                kept[ref.sop_instance_uid] = ref
            elif overwrite:
                kept[ref.sop_instance_uid] = ref
                if earlier.key != ref.key:
                    unused.append(earlier.key)
            elif earlier.key != ref.key:
                unused.append(ref.key)
    return list(kept.values()), unused


@dataclass
class Job:
    """Released associations that form one job of ``pipeline``."""

    pipeline: str
    records: list[AssociationRecord]
    overwrite: bool = False
    job_id: str = ""

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("a job needs at least one association")
        self.records.sort(key=lambda r: (r.released_at, r.association_id))
        if not self.job_id:
            self.job_id = job_id_for(r.association_id for r in self.records)

    def manifest(self) -> JobManifest:
        """The manifest; the same records give the same manifest, byte for byte."""
        first = self.records[0]
        instances, _ = merge_instances(self.records, self.overwrite)
        return JobManifest(
            job_id=self.job_id,
            pipeline=self.pipeline,
            called_ae_title=first.called_ae_title,
            calling_ae_title=first.calling_ae_title,
            calling_host=first.calling_host,
            associations=[r.association_id for r in self.records],
            instances=instances,
            created_at=max(r.released_at for r in self.records),
        )

    def unused_keys(self) -> list[str]:
        return merge_instances(self.records, self.overwrite)[1]


@dataclass
class _Pending:
    records: list[AssociationRecord] = field(default_factory=list)
    timeout: float = 0.0
    last_added: float = 0.0


class JobGrouper:
    """Groups released associations of AE titles that have a timeout (thread-safe).

    ``activity`` is called for every stored instance, ``add`` for every released
    association; ``due`` hands back the groups whose quiet period is over.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: dict[Group, _Pending] = {}
        self._last_instance: dict[Group, float] = {}
        self.changed = threading.Condition()

    def activity(self, group: Group) -> None:
        with self.changed:
            self._last_instance[group] = self._clock()

    def add(self, record: AssociationRecord, timeout: float) -> None:
        with self.changed:
            pending = self._pending.setdefault(record.group, _Pending())
            pending.records.append(record)
            pending.timeout = timeout
            pending.last_added = self._clock()
            self.changed.notify_all()

    def _deadline(self, group: Group, pending: _Pending) -> float:
        quiet_since = max(pending.last_added, self._last_instance.get(group, 0.0))
        return quiet_since + pending.timeout

    def due(self) -> list[list[AssociationRecord]]:
        """Remove and return the groups that had no instance for their timeout."""
        now = self._clock()
        ready: list[list[AssociationRecord]] = []
        with self.changed:
            for group, pending in list(self._pending.items()):
                if now >= self._deadline(group, pending):
                    ready.append(pending.records)
                    del self._pending[group]
                    self._last_instance.pop(group, None)
        return ready

    def next_deadline(self) -> float | None:
        with self.changed:
            deadlines = [self._deadline(g, p) for g, p in self._pending.items()]
        return min(deadlines) if deadlines else None

    def wait(self, stop: threading.Event, longest: float = 1.0) -> None:
        """Sleep until the next deadline, a new group, or ``longest`` seconds."""
        with self.changed:
            deadlines = [self._deadline(g, p) for g, p in self._pending.items()]
            delay = min(deadlines) - self._clock() if deadlines else longest
            if delay > 0 and not stop.is_set():
                self.changed.wait(min(delay, longest))

    def pending_associations(self) -> set[str]:
        with self.changed:
            return {r.association_id for p in self._pending.values() for r in p.records}
