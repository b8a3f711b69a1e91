"""Jobs: which released associations form one, and when it is released.

Each AE title groups by ``grouping``:

* ``association`` (Clara), ``timeout: 0``: each released association is a job of its own.
* ``association``, ``timeout: T`` > 0: released associations with the same called and
  calling AE titles are grouped until no instance arrived on any association of that pair
  for ``T`` seconds; then the group is one job.
* ``study``: every instance goes to the job of its StudyInstanceUID (per called AE title),
  whatever association brought it. A study's job is released once no instance of that
  study arrived for ``timeout`` seconds (its quiet period) *and* every association that
  brought one has ended. Two studies interleaved on one association become two jobs; one
  study sent over three associations becomes one job.

An association with no stored instance starts no job; an aborted one never does (its
instances are quarantined, :mod:`services.receiver.quarantine`).

A record's instances are split into *parts*: the whole association (``""``) for
association grouping, one part per StudyInstanceUID for study grouping. A job is a set of
parts of one key. Job IDs are derived from the IDs of the associations that form the job
(and the study), so releasing the same job again (after a crash) gives the same job ID,
manifest key and event ID.

When associations of one job hold the same SOP Instance UID, the copy stored last is used
(``overwrite``) or the first (otherwise); see :mod:`services.receiver.duplicates`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import keys
from shared.events import event_id
from shared.manifest import InstanceRef, JobManifest

Group = tuple[str, ...]
"""What a job is formed around: ``("association", id)``, ``("pair", called, calling)`` or
``("study", called, StudyInstanceUID)``."""
Grouping = Literal["association", "study"]
Ending = Literal["released", "aborted", "interrupted", "orphaned"]


def job_id_for(association_ids: Iterable[str], study: str = "") -> str:
    """The job ID of the job that these associations form (order does not matter); a
    study-grouped job's ID also depends on its StudyInstanceUID."""
    if study:
        return event_id("job", "study", study, *sorted(association_ids))
    return event_id("job", *sorted(association_ids))


class DuplicateConflict(BaseModel):
    """Audit of one SOP Instance UID received again with different content."""

    model_config = ConfigDict(extra="ignore")

    sop_instance_uid: str
    policy: str
    outcome: Literal["kept-first", "overwritten", "rejected"]
    first_association: str
    first_digest: str
    digest: str
    at: datetime


class AssociationRecord(BaseModel):
    """A released association, stored at :func:`shared.keys.association_record` on release.

    ``job_id`` is set once the association is given to a job (before the manifest is
    written) and ``published`` once ``job.received`` was confirmed by the broker. With
    study grouping ``study_jobs`` and ``published_studies`` say the same per study, and
    ``published`` is set once every study is. A record marks its ``incoming/`` prefix as
    released: orphan cleanup never touches it.

    ``ended`` says how the association ended; only ``released`` ones form jobs, the others
    are written to the quarantine instead (``quarantined_at``, ``reason``).
    ``stored_at`` holds when each instance's copy was stored (Unix seconds), so that the
    copy stored last or first is used whatever order the associations were released in.
    ``duplicates`` audits SOP Instance UIDs received again with different content.
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
    grouping: Grouping = "association"
    study_jobs: dict[str, str] = Field(default_factory=dict)
    published_studies: list[str] = Field(default_factory=list)
    stored_at: dict[str, float] = Field(default_factory=dict)
    duplicates: list[DuplicateConflict] = Field(default_factory=list)
    ended: Ending = "released"
    reason: str = ""
    quarantined_at: datetime | None = None
    release_requested: bool = False

    @field_validator("association_id")
    @classmethod
    def _id(cls, value: str) -> str:
        return keys.validate_id(value, "association id")

    @property
    def group(self) -> Group:
        """The group of an association-grouped record (AE titles with a timeout)."""
        return ("pair", self.called_ae_title, self.calling_ae_title)

    def parts(self) -> dict[str, list[InstanceRef]]:
        """The record's instances by part: ``""`` for association grouping, else by study."""
        if self.grouping != "study":
            return {"": list(self.instances)}
        parts: dict[str, list[InstanceRef]] = {}
        for ref in self.instances:
            parts.setdefault(ref.study_instance_uid, []).append(ref)
        return parts

    def job_of(self, part: str) -> str | None:
        return self.study_jobs.get(part) if part else self.job_id

    def stamp(self, part: str, job_id: str) -> bool:
        """Give ``part`` to ``job_id``; True if that changed the record."""
        if self.job_of(part) == job_id:
            return False
        if part:
            self.study_jobs[part] = job_id
        else:
            self.job_id = job_id
        return True

    def is_published(self, part: str) -> bool:
        return self.published or (bool(part) and part in self.published_studies)

    def mark_published(self, part: str) -> bool:
        """Mark ``part``'s job published; True if that changed the record."""
        if self.is_published(part):
            return False
        if part:
            self.published_studies.append(part)
            self.published = set(self.published_studies) >= set(self.parts())
        else:
            self.published = True
        return True


def merge_instances(
    records: Iterable[AssociationRecord], overwrite: bool, part: str = ""
) -> tuple[list[InstanceRef], list[str]]:
    """The job's instances, and the keys of copies the job does not use.

    Only the instances of ``part`` are taken (all of them for ``""``). Of copies of one
    SOP Instance UID, the one stored last is used with ``overwrite``, else the one stored
    first (by the records' ``stored_at``; records that lack it count in release order).
    """
    kept: dict[str, tuple[float, InstanceRef]] = {}
    unused: list[str] = []
    for index, record in enumerate(records):
        for ref in record.parts().get(part, []) if part else record.instances:
            when = record.stored_at.get(ref.sop_instance_uid, float(index))
            earlier = kept.get(ref.sop_instance_uid)
            if earlier is None:
                kept[ref.sop_instance_uid] = (when, ref)
                continue
            later = when >= earlier[0]
            if later == overwrite:
                kept[ref.sop_instance_uid] = (when, ref)
                if earlier[1].key != ref.key:
                    unused.append(earlier[1].key)
            elif earlier[1].key != ref.key:
                unused.append(ref.key)
    return [ref for _, ref in kept.values()], unused


@dataclass
class Job:
    """Released associations (their ``part``: a study, or all) that form one job."""

    pipeline: str
    records: list[AssociationRecord]
    overwrite: bool = False
    job_id: str = ""
    part: str = ""

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("a job needs at least one association")
        self.records.sort(key=lambda r: (r.released_at, r.association_id))
        if not self.job_id:
            self.job_id = job_id_for((r.association_id for r in self.records), self.part)

    def manifest(self) -> JobManifest:
        """The manifest; the same records give the same manifest, byte for byte."""
        first = self.records[0]
        instances, _ = merge_instances(self.records, self.overwrite, self.part)
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
        return merge_instances(self.records, self.overwrite, self.part)[1]


def part_of(group: Group) -> str:
    """The record part a group's job takes: the study of a study group, else all."""
    return group[2] if group[0] == "study" else ""


@dataclass
class _Pending:
    records: list[AssociationRecord] = field(default_factory=list)
    timeout: float = 0.0
    last_added: float = 0.0


class JobGrouper:
    """Groups released associations (parts of them) until their group falls quiet
    (thread-safe).

    ``activity`` is called for every stored instance with its group, ``add`` for every
    released association's part; ``due`` hands back the groups whose quiet period is over.
    Study groups also wait for every association that ``activity`` reported for them
    (``ended`` is called when one is released or aborted).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: dict[Group, _Pending] = {}
        self._last_instance: dict[Group, float] = {}
        self._open: dict[Group, set[str]] = {}
        self.changed = threading.Condition()

    def activity(self, group: Group, association_id: str = "") -> None:
        with self.changed:
            self._last_instance[group] = self._clock()
            if group[0] == "study" and association_id:
                self._open.setdefault(group, set()).add(association_id)

    def ended(self, association_id: str) -> None:
        """The association is released or aborted: study groups no longer wait for it."""
        with self.changed:
            for group, open_ids in list(self._open.items()):
                open_ids.discard(association_id)
                if not open_ids:
                    del self._open[group]
                    if group not in self._pending:
                        self._last_instance.pop(group, None)
            self.changed.notify_all()

    def add(self, group: Group, record: AssociationRecord, timeout: float) -> None:
        with self.changed:
            pending = self._pending.setdefault(group, _Pending())
            if all(r.association_id != record.association_id for r in pending.records):
                pending.records.append(record)
            pending.timeout = timeout
            pending.last_added = self._clock()
            self.changed.notify_all()

    def _deadline(self, group: Group, pending: _Pending) -> float:
        if self._open.get(group):
            return float("inf")
        quiet_since = max(pending.last_added, self._last_instance.get(group, 0.0))
        return quiet_since + pending.timeout

    def due(self) -> list[tuple[Group, list[AssociationRecord]]]:
        """Remove and return the groups that had no instance for their timeout."""
        now = self._clock()
        ready: list[tuple[Group, list[AssociationRecord]]] = []
        with self.changed:
            for group, pending in list(self._pending.items()):
                if now >= self._deadline(group, pending):
                    ready.append((group, pending.records))
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
