"""The sweep of ``incoming/``: unpublished jobs are finished, orphans quarantined.

Run at start, every ``SERIESFLOW_ORPHAN_SWEEP_SECONDS``, and again when a record it saw
becomes due. Each ``incoming/<id>/`` prefix that this process does not handle itself is
looked at until it is settled:

============================================  =============================================
what the prefix holds                         what the sweep does
============================================  =============================================
a record marked published                     nothing (remembered, never looked at again)
a record whose job ID is stamped but not      adopts it at once: the job is released again
published (a receiver died, or the broker     under that job ID (same manifest, same event)
was down, while it was being released)
a record not yet given a job, released more   adopts it: with the other unjobbed records of
than the AE title's ``timeout`` plus          its AE title pair, or of its study
``SERIESFLOW_RECOVERY_GRACE_SECONDS`` ago     (younger ones: the sweep runs again when
                                              they are due)
a quarantine record                           nothing (:mod:`services.receiver.quarantine`)
instances but no record, and an association   quarantines it (``ended: orphaned``): an
ID older than ``incoming-ttl``                association open when a receiver died
============================================  =============================================

An association's age comes from its ID (UUIDv7); a prefix whose ID carries no time is
never touched. ``incoming-ttl`` must be longer than the longest association, because a
receiver cannot tell another live receiver's open association from an orphan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from services.receiver.association import association_created
from services.receiver.grouping import quiet_period
from services.receiver.job import AssociationRecord
from services.receiver.quarantine import quarantine_orphan
from services.receiver.release import JobService
from shared import keys
from shared.errors import InvalidIdentifierError
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.store import ObjectNotFoundError

log = get_logger("receiver.cleanup")


@dataclass(frozen=True)
class SweepResult:
    orphans_quarantined: int
    jobs_recovered: int
    next_due: float | None = None
    """When (Unix seconds) the earliest record seen but not yet adopted becomes due."""


def sweep(
    job_store: JobStore,
    jobs: JobService,
    incoming_ttl: float,
    recovery_grace: float,
    clock: Callable[[], float] = time.time,
) -> SweepResult:
    """One pass over ``incoming/`` (see the module docstring)."""
    now = clock()
    orphans = 0
    next_due: float | None = None
    adopt: list[AssociationRecord] = []
    for association_id in job_store.incoming_associations():
        try:
            keys.validate_id(association_id)
        except InvalidIdentifierError:
            continue
        if jobs.is_known(association_id):
            continue
        try:
            record = AssociationRecord.model_validate(job_store.association_record(association_id))
        except ObjectNotFoundError:
            if job_store.is_quarantined(association_id):
                jobs.remember(association_id)
                continue
            created = association_created(association_id)
            old = created is not None and now - created >= incoming_ttl
            if old and not jobs.is_known(association_id):
                quarantine_orphan(job_store, association_id)
                jobs.remember(association_id)
                orphans += 1
            continue
        except (ValidationError, ValueError):
            log.error(
                "association record is damaged; left alone",
                extra={"key": keys.incoming_prefix(association_id)},
            )
            jobs.remember(association_id)
            continue
        if record.published:
            jobs.remember(association_id)
            continue
        stamped = any(record.job_of(part) for part in record.parts())
        config = jobs.ae_titles.get(record.called_ae_title)
        timeout = quiet_period(config) if config is not None else 0.0
        due = record.released_at.timestamp() + timeout + recovery_grace
        if stamped or now >= due:
            adopt.append(record)
        else:
            next_due = due if next_due is None else min(next_due, due)
    recovered = jobs.adopt(adopt) if adopt else 0
    if orphans or recovered:
        log.info(
            "incoming swept", extra={"orphans_quarantined": orphans, "jobs_recovered": recovered}
        )
    return SweepResult(orphans, recovered, next_due)
