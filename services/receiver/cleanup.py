"""The sweep of ``incoming/``: orphans are deleted, unpublished jobs are finished.

Run at start and every ``SERIESFLOW_ORPHAN_SWEEP_SECONDS``. Each ``incoming/<id>/``
prefix that this process does not handle itself is looked at once:

============================================  =============================================
what the prefix holds                         what the sweep does
============================================  =============================================
a record marked published                     nothing (remembered, never looked at again)
a record not yet published, released more     adopts it: the job is released under the job
than the AE title's ``timeout`` plus          ID the record names, or, if it names none,
``SERIESFLOW_RECOVERY_GRACE_SECONDS`` ago     with the other unjobbed records of its AE
                                              title pair
instances but no record, and an association   deletes the prefix: an association that was
ID older than ``incoming-ttl``                aborted, cut off, or open when a receiver died
============================================  =============================================

An association's age comes from its ID (UUIDv7); a prefix whose ID carries no time is
never deleted. ``incoming-ttl`` must be longer than the longest association, because a
receiver cannot tell another live receiver's open association from an orphan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from services.receiver.association import association_created
from services.receiver.job import AssociationRecord
from services.receiver.release import JobService
from shared import keys
from shared.errors import InvalidIdentifierError
from shared.logs import get_logger
from shared.store import ObjectNotFoundError, ObjectStore

INCOMING = "incoming/"
log = get_logger("receiver.cleanup")


@dataclass(frozen=True)
class SweepResult:
    orphans_deleted: int
    jobs_recovered: int


def sweep(
    store: ObjectStore,
    jobs: JobService,
    incoming_ttl: float,
    recovery_grace: float,
    clock: Callable[[], float] = time.time,
) -> SweepResult:
    """One pass over ``incoming/`` (see the module docstring)."""
    now = clock()
    orphans = 0
    adopt: list[AssociationRecord] = []
    for name in store.list(INCOMING, recursive=False):
        association_id = name[len(INCOMING) :].rstrip("/")
        try:
            keys.validate_id(association_id)
        except InvalidIdentifierError:
            continue
        if jobs.is_known(association_id):
            continue
        try:
            record = AssociationRecord.model_validate(
                store.get_json(keys.association_record(association_id))
            )
        except ObjectNotFoundError:
            created = association_created(association_id)
            old = created is not None and now - created >= incoming_ttl
            if old and not jobs.is_known(association_id):
                deleted = store.delete_prefix(keys.incoming_prefix(association_id))
                orphans += 1
                log.info(
                    "orphan instances deleted",
                    extra={"association": association_id, "objects": deleted},
                )
            continue
        except (ValidationError, ValueError):
            log.error("association record is damaged; left alone", extra={"key": name})
            jobs.remember(association_id)
            continue
        if record.published:
            jobs.remember(association_id)
            continue
        config = jobs.ae_titles.get(record.called_ae_title)
        timeout = config.timeout if config is not None else 0.0
        if now - record.released_at.timestamp() >= timeout + recovery_grace:
            adopt.append(record)
    recovered = jobs.adopt(adopt) if adopt else 0
    if orphans or recovered:
        log.info("incoming swept", extra={"orphans_deleted": orphans, "jobs_recovered": recovered})
    return SweepResult(orphans, recovered)
