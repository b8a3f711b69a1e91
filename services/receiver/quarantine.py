"""The quarantine: instances acknowledged on an association that was never released.

An instance answered Success is never deleted because an association ended badly. When an
association ends without A-RELEASE it starts no job (Clara), and its record goes to
``quarantine/<association_id>.json`` with ``ended``:

* ``aborted``: the peer sent A-ABORT, or the connection was lost or timed out;
* ``interrupted``: the receiver was stopping and the association outlived the drain;
* ``orphaned``: found by the sweep without any record (a receiver killed mid-association),
  older than ``incoming-ttl``.

Its instances stay where they are (``incoming/<association_id>/``). An operator lists
them (``seriesflow quarantine``, ``GET /api/v1/quarantine``) and releases them as a job or
deletes them; both go through :class:`shared.jobstore.JobStore`. A release request is only
a flag on the record: the receiver (:func:`check_quarantine`, every
``SERIESFLOW_QUARANTINE_CHECK_SECONDS``) turns it into a released record and a job, under
the job ID ``job_id_for([association_id])`` (per study for study grouping), so a release
requested twice is one job. After ``SERIESFLOW_QUARANTINE_SECONDS`` a quarantined
association's instances and record are deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO

import pydicom
from pydantic import ValidationError

from services.receiver.instance import InstanceError, describe
from services.receiver.job import AssociationRecord
from services.receiver.release import JobService
from shared import keys
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.manifest import InstanceRef
from shared.store import ObjectNotFoundError

log = get_logger("receiver.quarantine")


def check_quarantine(
    job_store: JobStore,
    jobs: JobService,
    keep_seconds: float,
    clock: Callable[[], float] = time.time,
) -> tuple[int, int]:
    """Release what operators asked for, delete what expired: (jobs released, deleted)."""
    released = deleted = 0
    now = clock()
    for association_id in job_store.quarantine_names():
        try:
            keys.validate_id(association_id)
            record = AssociationRecord.model_validate(job_store.quarantine_record(association_id))
        except ObjectNotFoundError:
            continue  # deleted by an operator meanwhile
        except (ValidationError, ValueError):
            key = keys.quarantine_record(association_id)
            log.error("quarantine record is damaged; left alone", extra={"key": key})
            continue
        jobs.remember(association_id)
        if record.release_requested:
            released += jobs.release_quarantined(record)
            continue
        since = (record.quarantined_at or record.released_at).timestamp()
        if now - since >= keep_seconds:
            objects = job_store.delete_incoming(association_id)
            job_store.delete_quarantine_record(association_id)
            deleted += 1
            log.info(
                "quarantined association expired: its instances are deleted",
                extra={"association": association_id, "objects": objects},
            )
    return released, deleted


def quarantine_orphan(job_store: JobStore, association_id: str) -> AssociationRecord:
    """Quarantine ``incoming/<association_id>/``, which has instances and no record."""
    instances: list[InstanceRef] = []
    called = calling = ""
    for key in job_store.incoming_instances(association_id):
        data = job_store.instance_bytes(key)
        try:
            meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).file_meta
            instances.append(
                describe(
                    data,
                    key,
                    str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID),
                )
            )
        except (InstanceError, Exception) as exc:
            log.warning(
                "orphan instance cannot be described; kept, not listed",
                extra={"key": key, "error": type(exc).__name__},
            )
            continue
        called = called or str(meta.get("ReceivingApplicationEntityTitle", "")).strip()
        calling = calling or str(meta.get("SourceApplicationEntityTitle", "")).strip()
    now = datetime.now(UTC)
    record = AssociationRecord(
        association_id=association_id,
        called_ae_title=called,
        calling_ae_title=calling,
        calling_host="",
        released_at=now,
        instances=instances,
        ended="orphaned",
        reason="instances without a record, older than incoming-ttl: the association was "
        "open when a receiver died",
        quarantined_at=now,
    )
    job_store.put_quarantine_record(association_id, record.model_dump(mode="json"))
    log.warning(
        "orphan instances quarantined",
        extra={"association": association_id, "instances": len(instances)},
    )
    return record
