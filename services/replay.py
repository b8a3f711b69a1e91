"""A job's stored events: record before publishing, re-publish, replay.

Every event a stage produces for a job is stored (:meth:`shared.jobstore.JobStore.record_event`,
layout and stage names in :mod:`shared.jobstore`) *before* it is published. The stored
envelope is the stage's proof of work: a stage that finds its event already stored does not
compute again, it re-publishes that envelope (the process may have died between storing and
publishing) and acknowledges. Because event IDs are derived from the job and the stage, a
re-published event is the same event, byte for byte.

:func:`replay_job` (``seriesflow replay --job ID``) re-publishes what is stored, in stage
order (:func:`shared.jobstore.replay_order`): received, parsed, selected, export requests,
other stages, then the failure, unless the job has since been selected. Replaying
``received`` after deleting a job's outputs and later events makes the parser and selector
compute them again, identically.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.broker import Broker
from shared.errors import InvalidInputError
from shared.events import Envelope, JobFailed, event_id
from shared.jobstore import FAILED, JobStore
from shared.logs import get_logger

log = get_logger("replay")


def record_and_publish(
    jobs: JobStore, broker: Broker, job_id: str, stage: str, envelope: Envelope
) -> None:
    """Store, then publish: a crash in between is healed by :func:`republish_stored`."""
    jobs.record_event(job_id, stage, envelope)
    broker.publish(envelope)


def republish_stored(jobs: JobStore, broker: Broker, job_id: str, stage: str) -> Envelope | None:
    """Re-publish the job's stored ``stage`` event; None (nothing published) if there is none.

    A damaged stored event counts as none, so the stage computes it again and overwrites it.
    """
    try:
        envelope = jobs.load_event(job_id, stage)
    except InvalidInputError as exc:
        log.warning("stored event damaged, computing again", extra={"reason": exc.reason})
        return None
    if envelope is not None:
        broker.publish(envelope)
    return envelope


def report_failure(
    jobs: JobStore,
    broker: Broker,
    *,
    job_id: str,
    correlation_id: str,
    pipeline: str,
    stage: str,
    reason: str,
    producer: str,
) -> Envelope:
    """Store and publish ``job.failed.<pipeline>`` for a job a stage cannot complete."""
    envelope = Envelope.wrap(
        JobFailed(pipeline=pipeline, stage=stage, reason=reason),
        job_id=job_id,
        producer=producer,
        event_id=event_id(job_id, FAILED, stage),
        correlation_id=correlation_id,
    )
    record_and_publish(jobs, broker, job_id, FAILED, envelope)
    log.error("job failed", extra={"stage": stage, "reason": reason, "pipeline": pipeline})
    return envelope


def clear_failure(jobs: JobStore, job_id: str, stages: Iterable[str]) -> bool:
    """Delete the job's stored failure if one of ``stages`` reported it; True if deleted.

    A stage that completes a job calls this, so a failure that a retry or replay has since
    overcome is no longer reported (nor replayed).
    """
    try:
        failure = jobs.load_event(job_id, FAILED)
    except InvalidInputError:
        failure = None
    if failure is None or not isinstance(failure.body, JobFailed):
        return False
    if failure.body.stage not in set(stages):
        return False
    jobs.delete_event(job_id, FAILED)
    return True


def replay_job(jobs: JobStore, broker: Broker, job_id: str) -> int:
    """Re-publish every stored event of ``job_id`` in stage order; returns how many.

    All events are read before the first is published, so a damaged one stops the replay
    before anything is sent.
    """
    envelopes: list[Envelope] = []
    for stage in jobs.stages(job_id):
        envelope = jobs.load_event(job_id, stage)
        if envelope is not None:
            envelopes.append(envelope)
    for envelope in envelopes:
        broker.publish(envelope)
    log.info("job replayed", extra={"job": job_id, "events": len(envelopes)})
    return len(envelopes)
