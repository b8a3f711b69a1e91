"""A job's stored events: record before publishing, re-publish, replay.

Every event a stage produces for a job is stored at ``jobs/<job_id>/events/<stage>.json``
(:func:`shared.keys.event`) *before* it is published. The stored envelope is the stage's
proof of work: a stage that finds its event already stored does not compute again, it
re-publishes that envelope (the process may have died between storing and publishing) and
acknowledges. Because event IDs are derived from the job and the stage, a re-published
event is the same event, byte for byte.

Stages and their stored names:

==================  ===================================  ================================
stage               stored as                            routing key
==================  ===================================  ================================
receiver            ``received``                         ``job.received.<pipeline>``
parser              ``parsed``                           ``job.parsed.<pipeline>``
selector            ``selected``                         ``job.selected.<pipeline>``
selector            ``export-<export_id>`` (one a route  ``export.requested.<destination>``
                    destination)
any stage           ``failed`` (the latest failure)      ``job.failed.<pipeline>``
==================  ===================================  ================================

:func:`replay_job` (``seriesflow replay --job ID``) re-publishes what is stored, in stage
order: received, parsed, selected, exports, then the failure, unless the job has since
been selected (a failure followed by a selection is stale). Stored events of other stages
come after the exports, by name. Replaying ``received`` after deleting a job's outputs and
later events makes the parser and selector compute them again, identically.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared import keys
from shared.broker import Broker
from shared.errors import InvalidInputError
from shared.events import Envelope, JobFailed, event_id
from shared.logs import get_logger
from shared.store import ObjectNotFoundError, ObjectStore

log = get_logger("replay")

RECEIVED = "received"
PARSED = "parsed"
SELECTED = "selected"
FAILED = "failed"
EXPORT_PREFIX = "export-"
_EVENT_SUFFIX = ".json"


def export_stage(export_id: str) -> str:
    """The stored name of an export request: ``export-<export_id>``."""
    return EXPORT_PREFIX + keys.validate_id(export_id, "export id")


def events_prefix(job_id: str) -> str:
    return keys.job_prefix(job_id) + "events/"


def stage_of(key: str) -> str:
    """``jobs/<id>/events/parsed.json`` -> ``parsed``."""
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix(_EVENT_SUFFIX)


def _rank(stage: str) -> tuple[int, str]:
    fixed = {RECEIVED: 0, PARSED: 1, SELECTED: 2}
    if stage in fixed:
        return (fixed[stage], stage)
    if stage.startswith(EXPORT_PREFIX):
        return (3, stage)
    if stage == FAILED:
        return (5, stage)
    return (4, stage)


def replay_order(event_keys: Iterable[str]) -> list[str]:
    """The stored event keys to re-publish, in stage order (see the module docstring)."""
    ordered = sorted(
        (k for k in event_keys if k.endswith(_EVENT_SUFFIX)), key=lambda k: _rank(stage_of(k))
    )
    stages = {stage_of(k) for k in ordered}
    if SELECTED in stages:
        ordered = [k for k in ordered if stage_of(k) != FAILED]
    return ordered


def load_event(store: ObjectStore, key: str) -> Envelope | None:
    """The envelope stored at ``key``, or None if there is none.

    A stored object that is not an envelope raises :class:`InvalidInputError`.
    """
    try:
        data = store.get_bytes(key)
    except ObjectNotFoundError:
        return None
    try:
        return Envelope.from_bytes(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"stored event {stage_of(key)} is damaged: {exc.reason}") from exc


def record(store: ObjectStore, key: str, envelope: Envelope) -> None:
    """Store ``envelope`` at ``key`` (durable when this returns)."""
    store.put_bytes(key, envelope.to_bytes(), "application/json")


def record_and_publish(store: ObjectStore, broker: Broker, key: str, envelope: Envelope) -> None:
    """Store, then publish: a crash in between is healed by :func:`republish_stored`."""
    record(store, key, envelope)
    broker.publish(envelope)


def republish_stored(store: ObjectStore, broker: Broker, key: str) -> Envelope | None:
    """Re-publish the envelope stored at ``key``; None (nothing published) if there is none.

    A damaged stored event counts as none, so the stage computes it again and overwrites it.
    """
    try:
        envelope = load_event(store, key)
    except InvalidInputError as exc:
        log.warning("stored event damaged, computing again", extra={"reason": exc.reason})
        return None
    if envelope is not None:
        broker.publish(envelope)
    return envelope


def report_failure(
    store: ObjectStore,
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
    record_and_publish(store, broker, keys.event(job_id, FAILED), envelope)
    log.error("job failed", extra={"stage": stage, "reason": reason, "pipeline": pipeline})
    return envelope


def clear_failure(store: ObjectStore, job_id: str, stages: Iterable[str]) -> bool:
    """Delete the job's stored failure if one of ``stages`` reported it; True if deleted.

    A stage that completes a job calls this, so a failure that a retry or replay has since
    overcome is no longer reported (nor replayed).
    """
    key = keys.event(job_id, FAILED)
    try:
        failure = load_event(store, key)
    except InvalidInputError:
        failure = None
    if failure is None or not isinstance(failure.body, JobFailed):
        return False
    if failure.body.stage not in set(stages):
        return False
    store.delete(key)
    return True


def replay_job(store: ObjectStore, broker: Broker, job_id: str) -> int:
    """Re-publish every stored event of ``job_id`` in stage order; returns how many.

    All events are read before the first is published, so a damaged one stops the replay
    before anything is sent.
    """
    ordered = replay_order(store.list(events_prefix(job_id)))
    envelopes: list[Envelope] = []
    for key in ordered:
        envelope = load_event(store, key)
        if envelope is not None:
            envelopes.append(envelope)
    for envelope in envelopes:
        broker.publish(envelope)
    log.info("job replayed", extra={"job": job_id, "events": len(envelopes)})
    return len(envelopes)
