"""From released associations to published jobs, durably and in order.

When an association is released, its record (:class:`AssociationRecord`) is written to
the local spool (:mod:`services.receiver.spool`), fsynced; the spool uploads it beside its
instances once every instance of the association is in the object store. Then, at once
(``timeout: 0``) or when its group falls quiet (:mod:`services.receiver.job`), the job
is released by one worker thread, each step idempotent and retried with backoff until it
succeeds (a broker or store outage delays jobs, it never loses them):

1. every record of the job is stamped with the job ID (per study, for study grouping);
2. the manifest is written at ``jobs/<job_id>/manifest.json``;
3. ``job.received.<pipeline>`` is stored at ``jobs/<job_id>/events/received.json`` and
   published with confirms (an already stored event is re-published as it is);
4. the records are marked published; copies of an instance the job does not use
   (``overwrite-same-instance``) are deleted.

A process that dies anywhere in between leaves records that say how far it got;
:mod:`services.receiver.cleanup` finds them and finishes the job under the same job ID.
An association that ends without A-RELEASE starts no job: its record goes to the
quarantine (:mod:`services.receiver.quarantine`), once its instances are in the store, and
its instances stay.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.receiver.association import OpenAssociation
from services.receiver.duplicates import DuplicatePolicy, InstanceIndex, policy_of
from services.receiver.grouping import quiet_period
from services.receiver.job import (
    AssociationRecord,
    Ending,
    Group,
    Job,
    JobGrouper,
    job_id_for,
    part_of,
)
from services.receiver.settings import ReceiverSettings
from services.receiver.spool import Spool
from services.replay import record_and_publish
from shared.broker import Broker
from shared.config import AETitleConfig
from shared.events import Envelope, JobReceived, event_id
from shared.jobstore import RECEIVED, JobStore
from shared.logs import get_logger, job_context
from shared.metrics import Metrics

PRODUCER = "receiver"
_KEEPALIVE_SECONDS = 5.0
log = get_logger("receiver.jobs")


@dataclass(frozen=True)
class _WriteRecord:
    record: AssociationRecord


@dataclass(frozen=True)
class _Quarantine:
    record: AssociationRecord


_Work = Job | _WriteRecord | _Quarantine


class JobService:
    """Turns released associations into jobs; one worker thread does the store and broker work.

    ``ae_titles`` maps each of our AE titles to its configuration and ``pipelines`` to its
    pipeline. Associations this process handles are *known*: the orphan sweep leaves them
    alone.
    """

    def __init__(
        self,
        settings: ReceiverSettings,
        job_store: JobStore,
        spool: Spool,
        ae_titles: dict[str, AETitleConfig],
        pipelines: dict[str, str],
        metrics: Metrics,
        broker_factory: Callable[[], Broker] | None = None,
    ) -> None:
        self.settings = settings
        self.job_store = job_store
        self.spool = spool
        self.ae_titles = ae_titles
        self.pipelines = pipelines
        self.grouper = JobGrouper()
        self.index = InstanceIndex()
        self._broker = (broker_factory or (lambda: Broker(settings, PRODUCER, metrics)))()
        self._connected = False
        self._queue: queue.Queue[_Work] = queue.Queue()
        self._stop = threading.Event()
        self._known: set[str] = set()
        self._known_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._work, name="receiver-jobs", daemon=True),
            threading.Thread(target=self._schedule, name="receiver-groups", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work (one attempt each), then stop. Groups still waiting for
        their timeout stay in the store as records and are released after a restart."""
        self._stop.set()
        with self.grouper.changed:
            self.grouper.changed.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._broker.close()

    # -- associations this process handles ---------------------------------------------

    def remember(self, association_id: str) -> None:
        with self._known_lock:
            self._known.add(association_id)

    def is_known(self, association_id: str) -> bool:
        with self._known_lock:
            return association_id in self._known

    # -- entry points (association threads) -----------------------------------------------

    def instance_stored(self, association: OpenAssociation, group: Group) -> None:
        if group[0] != "association":
            self.grouper.activity(group, association.association_id)

    def _config(self, ae_title: str) -> AETitleConfig:
        return self.ae_titles.get(ae_title) or AETitleConfig.model_validate({"ae-title": ae_title})

    def _record(self, association: OpenAssociation, ended: Ending) -> AssociationRecord:
        config = self._config(association.called_ae_title)
        with association.lock:
            instances = list(association.instances.values())
            stored_at = dict(association.stored_at)
            duplicates = list(association.duplicates)
        association_grouped = config.grouping == "association"
        return AssociationRecord(
            association_id=association.association_id,
            called_ae_title=association.called_ae_title,
            calling_ae_title=association.calling_ae_title,
            calling_host=association.calling_host,
            released_at=datetime.now(UTC),
            instances=instances,
            job_id=(
                job_id_for([association.association_id])
                if association_grouped and config.timeout == 0 and ended == "released"
                else None
            ),
            grouping=config.grouping,
            stored_at=stored_at,
            duplicates=duplicates,
            ended=ended,
        )

    def association_released(self, association: OpenAssociation) -> None:
        record = self._record(association, "released")
        instances = record.instances
        if not instances:
            self.grouper.ended(association.association_id)
            if record.duplicates:
                self._keep_audit(record, "released: every instance was a duplicate")
            log.info(
                "association released without instances: no job",
                extra={"association": association.association_id},
            )
            return
        log.info(
            "association released",
            extra={
                "association": association.association_id,
                "called_ae_title": association.called_ae_title,
                "calling_ae_title": association.calling_ae_title,
                "instances": len(instances),
            },
        )
        try:
            self.spool.store_record(
                record.association_id,
                record.model_dump(mode="json"),
                lambda: self._released(record),
            )
        except Exception as exc:
            log.error(
                "association record not spooled; written to the store after its instances",
                extra={"association": record.association_id, "error": type(exc).__name__},
            )
            self.spool.after_uploads(
                record.association_id, lambda: self._queue.put(_WriteRecord(record))
            )

    def association_aborted(self, association: OpenAssociation, ended: Ending) -> None:
        """An association ended without A-RELEASE: no job; its instances are quarantined.

        ``ended`` is ``aborted`` (the peer aborted, or the connection was lost) or
        ``interrupted`` (the receiver ended it while stopping)."""
        self.grouper.ended(association.association_id)
        self.index.forget_association(association.association_id)
        record = self._record(association, ended)
        record.quarantined_at = record.released_at
        record.reason = (
            "the receiver stopped before the association was released"
            if ended == "interrupted"
            else "the association ended without A-RELEASE (A-ABORT or connection lost)"
        )
        log.warning(
            "association ended without release: no job, its instances are quarantined",
            extra={
                "association": association.association_id,
                "ended": ended,
                "instances": len(record.instances),
            },
        )
        self.spool.forget(association.association_id)
        if record.instances or record.duplicates:
            self.spool.after_uploads(
                association.association_id, lambda: self._queue.put(_Quarantine(record))
            )

    def _keep_audit(self, record: AssociationRecord, reason: str) -> None:
        """Keep the audit of an association that stored nothing but had duplicates."""
        record.reason = reason
        record.published = True
        self._queue.put(_WriteRecord(record))

    def adopt(self, records: Iterable[AssociationRecord]) -> int:
        """Release jobs for records another (dead) process left unpublished, or that an
        operator released from quarantine; how many jobs."""
        by_job: dict[tuple[str, str], list[AssociationRecord]] = {}
        by_group: dict[Group, list[AssociationRecord]] = {}
        for record in records:
            self.remember(record.association_id)
            for part in record.parts():
                if record.is_published(part):
                    continue
                job_id = record.job_of(part)
                if job_id:
                    by_job.setdefault((job_id, part), []).append(record)
                else:
                    group = ("study", record.called_ae_title, part) if part else record.group
                    by_group.setdefault(group, []).append(record)
        jobs = [self._job(group, job_id, part) for (job_id, part), group in by_job.items()]
        jobs += [self._job(records, part=part_of(g)) for g, records in by_group.items()]
        for job in jobs:
            if job is not None:
                log.info("recovering job", extra={"job": job.job_id, "pipeline": job.pipeline})
                self._queue.put(job)
        return sum(job is not None for job in jobs)

    def release_quarantined(self, record: AssociationRecord) -> int:
        """An operator released a quarantined association: its instances become a job
        (one per study for study grouping), written as a released record; how many jobs."""
        record.release_requested = True
        for part in record.parts():
            record.stamp(part, job_id_for([record.association_id], part))
        self._write_record(record)
        self.job_store.delete_quarantine_record(record.association_id)
        log.info(
            "quarantined association released as a job by an operator",
            extra={"association": record.association_id, "instances": len(record.instances)},
        )
        return self.adopt([record])

    # -- internals --------------------------------------------------------------------------

    def _released(self, record: AssociationRecord) -> None:
        """Hand a written record's parts to their groups (or straight to a job)."""
        self.grouper.ended(record.association_id)
        if not record.instances:
            return
        config = self._config(record.called_ae_title)
        if record.grouping == "study":
            for part in record.parts():
                self.grouper.add(
                    ("study", record.called_ae_title, part), record, quiet_period(config)
                )
            return
        if record.job_id is None:
            self.grouper.add(record.group, record, quiet_period(config))
            return
        self.index.forget_group(("association", record.association_id))
        job = self._job([record], record.job_id)
        if job is not None:
            self._queue.put(job)

    def _job(
        self, records: list[AssociationRecord], job_id: str = "", part: str = ""
    ) -> Job | None:
        called = records[0].called_ae_title
        pipeline = self.pipelines.get(called)
        if pipeline is None:
            log.error(
                "released association's AE title is no longer configured: no job",
                extra={"called_ae_title": called, "associations": len(records)},
            )
            return None
        overwrite = policy_of(self._config(called)) is DuplicatePolicy.OVERWRITE
        return Job(pipeline, records, overwrite, job_id, part)

    def _write_record(self, record: AssociationRecord) -> None:
        self.job_store.put_association_record(record.association_id, record.model_dump(mode="json"))

    def _schedule(self) -> None:
        while not self._stop.is_set():
            self.grouper.wait(self._stop)
            for group, records in self.grouper.due():
                self.index.forget_group(group)
                job = self._job(records, part=part_of(group))
                if job is not None:
                    self._queue.put(job)

    def _work(self) -> None:
        try:
            self._connect()
        except Exception as exc:
            log.warning(
                "broker unreachable; jobs are published when it is back",
                extra={"reason": getattr(exc, "reason", type(exc).__name__)},
            )
        idle = 0.0
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                idle += 0.2
                if idle >= _KEEPALIVE_SECONDS:
                    self._keep_alive()
                    idle = 0.0
                continue
            idle = 0.0
            self._retrying(item)

    def _retrying(self, item: _Work) -> None:
        delay = self.settings.retry_backoff_seconds or 0.5
        while True:
            try:
                self._do(item)
                return
            except Exception as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                if self._stop.is_set():
                    log.error(
                        "stopping with work not done; it is finished after a restart",
                        extra={"work": type(item).__name__, "reason": reason},
                    )
                    return
                log.warning(
                    "job work failed, will retry",
                    extra={"work": type(item).__name__, "reason": reason, "in_seconds": delay},
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_seconds or 30.0)

    def _do(self, item: _Work) -> None:
        if isinstance(item, Job):
            self._release(item)
        elif isinstance(item, _WriteRecord):
            self._write_record(item.record)
            self._released(item.record)
        else:
            self.job_store.put_quarantine_record(
                item.record.association_id, item.record.model_dump(mode="json")
            )
            log.info(
                "association quarantined",
                extra={
                    "association": item.record.association_id,
                    "instances": len(item.record.instances),
                },
            )

    def _release(self, job: Job) -> None:
        with job_context(job.job_id):
            for record in job.records:
                if record.stamp(job.part, job.job_id):
                    self._write_record(record)
            manifest = job.manifest()
            manifest_key = self.job_store.put_manifest(manifest)
            self._publish(job, manifest_key, len(manifest.instances))
            for record in job.records:
                if record.mark_published(job.part):
                    self._write_record(record)
            for key in job.unused_keys():
                try:
                    self.job_store.delete_instance(key)
                except Exception:
                    log.warning("unused copy of an instance not deleted", extra={"key": key})
            log.info(
                "job released",
                extra={
                    "pipeline": job.pipeline,
                    "instances": len(manifest.instances),
                    "associations": len(job.records),
                    "study_instance_uid": job.part or None,
                },
            )

    def _publish(self, job: Job, manifest_key: str, count: int) -> None:
        self._connect()
        try:
            stored = self.job_store.load_event(job.job_id, RECEIVED)
            if stored is not None:
                self._broker.publish(stored)
                return
            first = job.records[0]
            envelope = Envelope.wrap(
                JobReceived(
                    pipeline=job.pipeline,
                    manifest_key=manifest_key,
                    instance_count=count,
                    called_ae_title=first.called_ae_title,
                    calling_ae_title=first.calling_ae_title,
                ),
                job_id=job.job_id,
                producer=PRODUCER,
                event_id=event_id(job.job_id, RECEIVED),
            )
            record_and_publish(self.job_store, self._broker, job.job_id, RECEIVED, envelope)
        except Exception:
            self._connected = False
            raise

    def _connect(self) -> None:
        if not self._connected:
            self._broker.close()
            self._broker.connect(attempts=1)
            self._connected = True

    def _keep_alive(self) -> None:
        """Let pika answer heartbeats while no job is released."""
        if not self._connected:
            return
        try:
            self._broker.channel.connection.process_data_events(time_limit=0)
        except Exception:
            self._connected = False
            self._broker.close()
