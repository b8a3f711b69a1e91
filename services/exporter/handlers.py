"""The exporter's message handler: ``export.requested`` in, ``export.completed`` out.

:func:`handle_export_requested` is a plain function returning a named
:class:`~services.exporter.status.Decision` (pynetdicom style); it raises where the broker
must act:

==========================================  ==============================================
situation                                   what happens
==========================================  ==============================================
at most half the files unconfirmed          publish ``succeeded`` (per-file statuses say
                                            which failed), acknowledge: the Clara rule
more than half unconfirmed, some of them    raise :class:`TransientError`: the broker
transiently (unreachable, no response,      retries later, with backoff
out of resources)
... on the last allowed delivery            publish ``failed``, raise TransientError: the
                                            broker dead-letters with the reason
more than half unconfirmed, none            publish ``failed``, raise
transiently (refused by the SCP, missing,   :class:`PermanentError`: dead-lettered at once
not DICOM, rejected permanently)
unknown destination                         publish ``failed``, raise PermanentError
the object store fails mid-way              raise TransientError (on the last delivery,
                                            publish ``failed`` first); a permanent store
                                            error publishes ``failed`` and dead-letters
==========================================  ==============================================

``delivery_limit`` deliveries are allowed in all: the reference's "retried up to three
times" is ``SERIESFLOW_DELIVERY_LIMIT=4``.

``export.completed`` is stored at ``jobs/<job>/events/exported-<export_id>.json`` (the
latest outcome; replayable) and published with the event ID
``uuid5(export_id, destination, "completed", status)``, so running an export again with the
same outcome publishes the same event, and a later success is not mistaken for a
duplicate of an earlier failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from services.exporter.export_state import StateRecorder, load_state
from services.exporter.exporting import (
    AttemptResult,
    ExportAttempt,
    ExportOptions,
    manifest_pairs,
    unique,
)
from services.exporter.settings import ExporterSettings
from services.exporter.status import Decision, decide
from services.replay import record_and_publish
from shared.broker import Broker, Delivery
from shared.config import DestinationConfig, SeriesflowConfig
from shared.configstore import LiveConfig
from shared.errors import PermanentError, SeriesflowError, TransientError
from shared.events import Envelope, ExportCompleted, ExportRequested, FileStatus, event_id
from shared.jobstore import JobStore, exported_stage
from shared.logs import get_logger, job_context

SERVICE = "exporter"
BINDINGS = ("export.requested.#",)
log = get_logger("exporter")
T = TypeVar("T")


class Destinations(Protocol):
    """Where destinations are looked up, per message (swap in a live registry later)."""

    @property
    def calling_ae_title(self) -> str: ...

    def get(self, name: str) -> DestinationConfig | None: ...


class ConfiguredDestinations:
    """The destinations in force: the configuration file's, with those stored through the
    REST API over them, looked up afresh for every export (see LiveConfig)."""

    def __init__(self, config: SeriesflowConfig | LiveConfig) -> None:
        self.live = config if isinstance(config, LiveConfig) else None
        self.config = config if isinstance(config, SeriesflowConfig) else config.static

    def _config(self) -> SeriesflowConfig:
        return self.live.current() if self.live is not None else self.config

    @property
    def calling_ae_title(self) -> str:
        return self._config().dicom.scu.ae_title

    def get(self, name: str) -> DestinationConfig | None:
        return self._config().destination(name)


def completed_event_id(export_id: str, destination: str, status: str) -> str:
    return event_id(export_id, destination, "completed", status)


def handle_export_requested(
    envelope: Envelope,
    delivery: Delivery,
    *,
    jobs: JobStore,
    broker: Broker,
    destinations: Destinations,
    settings: ExporterSettings,
    options: ExportOptions,
) -> Decision:
    body = envelope.body
    if not isinstance(body, ExportRequested):
        raise PermanentError(f"the exporter expects export.requested, not {body.type}")
    attempt_number = delivery.delivery_count + 1
    last_delivery = attempt_number >= settings.delivery_limit
    with job_context(envelope.job_id, envelope.correlation_id):
        destination = destinations.get(body.destination)
        if destination is None:
            reason = f"destination {body.destination} is not configured"
            files = [
                FileStatus(key=k, status="skipped", detail=reason)
                for k in unique(body.instance_keys)
            ]
            _publish_quietly(jobs, broker, envelope, body, "failed", files, attempt_number)
            raise PermanentError(reason)
        started = time.perf_counter()
        try:
            result = broker.run_alongside(
                lambda: _attempt(
                    jobs, envelope.job_id, body, destination, destinations, settings, options
                ),
            )
        except PermanentError:
            _publish_from_state(jobs, broker, envelope, body, attempt_number)
            raise
        except TransientError as exc:
            if last_delivery:
                _publish_from_state(jobs, broker, envelope, body, attempt_number)
            raise TransientError(f"export to {body.destination} interrupted: {exc.reason}") from exc
        except Exception:  # unexpected: the broker retries it as transient
            if last_delivery:
                _publish_from_state(jobs, broker, envelope, body, attempt_number)
            raise
        decision = decide(result.tally, delivery.delivery_count, settings.delivery_limit)
        extra = {
            "export_id": body.export_id,
            "destination": body.destination,
            "attempt": result.attempt,
            "files": result.tally.total,
            "confirmed": result.tally.confirmed,
            "sent_now": result.sent_now,
            "decision": decision.value,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if decision is Decision.SUCCEEDED:
            _publish(jobs, broker, envelope, body, "succeeded", result.files, result.attempt)
            log.info("export completed", extra=extra)
            return decision
        reason = result.reason(body.destination)
        if decision is Decision.RETRY:
            log.warning("export failed, will retry", extra=extra | {"reason": reason})
            raise TransientError(reason)
        _publish_quietly(jobs, broker, envelope, body, "failed", result.files, result.attempt)
        log.error("export failed", extra=extra | {"reason": reason})
        if decision is Decision.GIVE_UP:
            raise TransientError(f"{reason} (gave up after {attempt_number} deliveries)")
        raise PermanentError(reason)


def make_handler(
    jobs: JobStore,
    broker: Broker,
    destinations: Destinations,
    settings: ExporterSettings,
    options: ExportOptions,
) -> Callable[[Envelope, Delivery], None]:
    """The handler for :meth:`shared.broker.Broker.consume`."""

    def handler(envelope: Envelope, delivery: Delivery) -> None:
        handle_export_requested(
            envelope,
            delivery,
            jobs=jobs,
            broker=broker,
            destinations=destinations,
            settings=settings,
            options=options,
        )

    return handler


def make_dead_letter_handler(
    jobs: JobStore, broker: Broker, settings: ExporterSettings
) -> Callable[[Envelope, str], None]:
    """``on_dead_letter`` for :meth:`shared.broker.Broker.consume`: an export RabbitMQ gave
    up on (the exporter died on it each time) is published ``failed``, with the files the
    stored state knows as sent."""

    def dead_lettered(envelope: Envelope, reason: str) -> None:
        body = envelope.body
        if isinstance(body, ExportRequested):
            with job_context(envelope.job_id, envelope.correlation_id):
                log.error(
                    "export given up",
                    extra={
                        "export_id": body.export_id,
                        "destination": body.destination,
                        "reason": reason,
                    },
                )
                _publish_from_state(jobs, broker, envelope, body, settings.delivery_limit + 1)

    return dead_lettered


def _attempt(
    jobs: JobStore,
    job_id: str,
    body: ExportRequested,
    destination: DestinationConfig,
    destinations: Destinations,
    settings: ExporterSettings,
    options: ExportOptions,
) -> AttemptResult:
    state = load_state(jobs, body.export_id)
    with StateRecorder(jobs, state, destination.name, settings.exporter_state_lag) as recorder:
        attempt = ExportAttempt(jobs, destination, destinations.calling_ae_title, recorder, options)
        return attempt.run(body.instance_keys, manifest_pairs(jobs, job_id))


def _publish(
    jobs: JobStore,
    broker: Broker,
    request: Envelope,
    body: ExportRequested,
    status: str,
    files: list[FileStatus],
    attempt: int,
) -> None:
    completed = ExportCompleted(
        export_id=body.export_id,
        destination=body.destination,
        status="succeeded" if status == "succeeded" else "failed",
        files=files,
        attempt=attempt,
    )
    envelope = Envelope.wrap(
        completed,
        job_id=request.job_id,
        producer=SERVICE,
        event_id=completed_event_id(body.export_id, body.destination, completed.status),
        correlation_id=request.correlation_id,
    )
    record_and_publish(jobs, broker, request.job_id, exported_stage(body.export_id), envelope)
    broker.metrics.export_finished(completed.status, [f.status for f in files], request.created_at)


def _publish_quietly(
    jobs: JobStore,
    broker: Broker,
    request: Envelope,
    body: ExportRequested,
    status: str,
    files: list[FileStatus],
    attempt: int,
) -> None:
    """Publish a failure; a failure to publish must not hide the export's own error."""
    try:
        _publish(jobs, broker, request, body, status, files, attempt)
    except SeriesflowError as exc:
        log.error("could not publish export.completed", extra={"reason": exc.reason})


def _publish_from_state(
    jobs: JobStore, broker: Broker, request: Envelope, body: ExportRequested, attempt: int
) -> None:
    """``failed`` with what the stored state knows (the store may be what failed)."""
    try:
        state = load_state(jobs, body.export_id).for_destination(body.destination)
    except SeriesflowError:
        state = None
    files = []
    for key in unique(body.instance_keys):
        record = state.files.get(key) if state is not None else None
        if record is None:
            files.append(FileStatus(key=key, status="failed", detail="not attempted"))
        else:
            files.append(FileStatus(key=key, status=record.status, detail=record.detail))
    _publish_quietly(jobs, broker, request, body, "failed", files, attempt)
