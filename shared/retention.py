"""Retention: what the store holds of finished jobs, and deleting it when its time is up.

A job's objects (its instances as received, manifest, outputs, events, export states) are
deleted through :meth:`shared.jobstore.JobStore.delete_job` once the job has been left
alone for longer than its state allows, counted from its last stored object:

=========================  =======================================  ============
the job                    kept for                                 default
=========================  =======================================  ============
completed                  ``SERIESFLOW_RETENTION_COMPLETED``       7 days
failed, dead-lettered,     ``SERIESFLOW_RETENTION_FAILED``          30 days
an export that failed,
or never finished
=========================  =======================================  ============

Durations are seconds, or a number with ``s``, ``m``, ``h`` or ``d``; ``0`` keeps those
jobs forever. A job still running (no failure, not selected, or an export without an
outcome) counts as failed for retention: it is kept as long as a failed one, then deleted,
so that a stuck job cannot hold patient data forever.

Who purges: the config API service runs :class:`RetentionLoop` every
``SERIESFLOW_RETENTION_INTERVAL`` (default 1 h; ``0`` turns it off); ``seriesflow retention
purge`` and ``POST /api/v1/retention/purge`` purge on demand. Purging is idempotent: two
replicas purging at once delete the same objects, and an interrupted delete is finished by
the next run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from shared.errors import InvalidInputError, SeriesflowError
from shared.events import ExportCompleted
from shared.jobstore import EXPORTED_PREFIX, JobInfo, JobStore
from shared.logs import get_logger
from shared.settings import ServiceSettings

log = get_logger("retention")

Held = Literal["completed", "failed", "running"]


@dataclass(frozen=True)
class RetentionPolicy:
    completed: float = 7 * 86400.0
    """Seconds a completed job is kept; 0: forever."""
    failed: float = 30 * 86400.0
    """Seconds a failed, dead-lettered or unfinished job is kept; 0: forever."""

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RetentionPolicy:
        return cls(settings.retention_completed, settings.retention_failed)

    def keep_for(self, held: Held) -> float:
        return self.completed if held == "completed" else self.failed


@dataclass(frozen=True)
class HeldJob:
    """One job the store holds, and when retention deletes it."""

    job_id: str
    pipeline: str | None
    state: Held
    updated: datetime
    age_seconds: float
    keep_seconds: float
    """0: kept forever."""

    @property
    def due(self) -> bool:
        return self.keep_seconds > 0 and self.age_seconds >= self.keep_seconds

    @property
    def delete_after(self) -> float | None:
        """Seconds until it is due (0 when due); None when kept forever."""
        if self.keep_seconds <= 0:
            return None
        return max(0.0, self.keep_seconds - self.age_seconds)

    def to_json(self) -> dict[str, object]:
        """The shape the REST API and ``seriesflow retention --json`` answer."""
        return {
            "jobId": self.job_id,
            "pipeline": self.pipeline,
            "state": self.state,
            "updated": self.updated.isoformat(),
            "ageSeconds": round(self.age_seconds, 1),
            "keepSeconds": self.keep_seconds,
            "deleteAfterSeconds": self.delete_after,
            "due": self.due,
        }


@dataclass
class PurgeReport:
    dry_run: bool
    purged: list[HeldJob] = field(default_factory=list)
    deleted_objects: int = 0
    errors: list[str] = field(default_factory=list)


def _export_failed(jobs: JobStore, job: JobInfo) -> bool:
    """Whether any export of the job gave up (one read per export outcome)."""
    for stage in job.events:
        if not stage.startswith(EXPORTED_PREFIX):
            continue
        try:
            envelope = jobs.load_event(job.job_id, stage)
        except SeriesflowError:
            return True  # a damaged outcome: keep the job as long as a failed one
        body = None if envelope is None else envelope.body
        if isinstance(body, ExportCompleted) and body.status == "failed":
            return True
    return False


def held_jobs(
    jobs: JobStore, policy: RetentionPolicy, now: datetime | None = None
) -> list[HeldJob]:
    """Every job the store holds, oldest first, with what retention does to it."""
    now = now or datetime.now(UTC)
    held: list[HeldJob] = []
    for job in jobs.list_jobs(with_pipeline=True):
        age = max(0.0, (now - job.updated).total_seconds())
        state: Held = job.state
        if state == "completed" and _export_failed(jobs, job):
            state = "failed"
        held.append(
            HeldJob(job.job_id, job.pipeline, state, job.updated, age, policy.keep_for(state))
        )
    held.sort(key=lambda h: h.updated)
    return held


def purge(
    jobs: JobStore,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PurgeReport:
    """Delete every job that is due (``dry_run``: only say which). A job that cannot be
    deleted now (the store is busy) is reported and left for the next run."""
    report = PurgeReport(dry_run=dry_run)
    for job in held_jobs(jobs, policy, now):
        if not job.due:
            continue
        if dry_run:
            report.purged.append(job)
            continue
        try:
            deleted = jobs.delete_job(job.job_id)
        except SeriesflowError as exc:
            report.errors.append(f"job {job.job_id}: {exc.reason}")
            log.warning(
                "retention: job not deleted; the next run tries again",
                extra={"job_id": job.job_id, "reason": exc.reason},
            )
            continue
        report.purged.append(job)
        report.deleted_objects += deleted
        log.info(
            "retention: job deleted",
            extra={
                "job_id": job.job_id,
                "state": job.state,
                "age_seconds": round(job.age_seconds),
                "objects": deleted,
            },
        )
    return report


class RetentionLoop(threading.Thread):
    """Purges every ``interval`` seconds until ``stop`` is set; errors are logged, and the
    loop goes on."""

    def __init__(
        self, jobs: JobStore, policy: RetentionPolicy, interval: float, stop: threading.Event
    ) -> None:
        if interval <= 0:
            raise InvalidInputError("the retention interval must be positive")
        super().__init__(name="retention", daemon=True)
        self.jobs = jobs
        self.policy = policy
        self.interval = interval
        self.stop = stop

    def run(self) -> None:
        log.info(
            "retention: purging periodically",
            extra={
                "interval_seconds": self.interval,
                "completed_seconds": self.policy.completed,
                "failed_seconds": self.policy.failed,
            },
        )
        while not self.stop.is_set():
            try:
                report = purge(self.jobs, self.policy)
                if report.purged:
                    log.info(
                        "retention: purge done",
                        extra={"jobs": len(report.purged), "objects": report.deleted_objects},
                    )
            except SeriesflowError as exc:
                log.warning("retention: purge failed; next run later", extra={"reason": exc.reason})
            except Exception:  # a bug must not end the loop silently
                log.exception("retention: purge failed unexpectedly")
            self.stop.wait(self.interval)


def start_retention_loop(
    settings: ServiceSettings, jobs: JobStore, stop: threading.Event
) -> RetentionLoop | None:
    """The periodic purge for a service (the config API runs it); None when
    ``SERIESFLOW_RETENTION_INTERVAL`` is 0."""
    if settings.retention_interval <= 0:
        log.info("retention: no periodic purge (SERIESFLOW_RETENTION_INTERVAL is 0)")
        return None
    loop = RetentionLoop(
        jobs, RetentionPolicy.from_settings(settings), settings.retention_interval, stop
    )
    loop.start()
    return loop
