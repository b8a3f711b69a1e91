"""What the job stages (parser, selector) share: failure reporting around a handler, and
the consume loop with the pipeline registry.

A stage handler subclasses :class:`JobStageHandler` and implements ``_handle``. Around it:
a message of the wrong type is a permanent error; a permanent error is reported as
``job.failed`` (and stored) before the broker dead-letters the message; a transient one
is reported only on the last delivery the broker allows, when retrying stops; a message
RabbitMQ dead-letters itself at the delivery limit (the stage died on it each time) is
reported by :meth:`JobStageHandler.dead_lettered` (see :mod:`shared.broker`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import ClassVar, Generic, Protocol, TypeVar

from services.replay import report_failure
from services.runtime import connect_broker, connect_store
from shared.broker import Broker, Delivery
from shared.config import SeriesflowConfig, load_config
from shared.configstore import LiveConfig
from shared.errors import PermanentError, SeriesflowError
from shared.events import Envelope
from shared.jobstore import JobStore
from shared.logs import get_logger, job_context
from shared.metrics import Metrics, serve_metrics
from shared.pipelines import Pipeline, PipelineRegistry
from shared.settings import ServiceSettings

BodyT = TypeVar("BodyT")


class PipelineLookup(Protocol):
    """Pipelines by name or Clara id: a fixed :class:`PipelineRegistry` or the live view."""

    def get(self, key: str) -> Pipeline | None: ...

    def all(self) -> list[Pipeline]: ...


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
log = get_logger("stage")


class JobStageHandler(Generic[BodyT, SettingsT]):
    """``handler(envelope, delivery)`` for :meth:`shared.broker.Broker.consume`."""

    service: ClassVar[str]
    expects: ClassVar[type]

    def __init__(
        self,
        jobs: JobStore,
        broker: Broker,
        pipelines: PipelineLookup,
        settings: SettingsT,
    ) -> None:
        self.jobs = jobs
        self.broker = broker
        self.pipelines = pipelines
        self.settings = settings
        self.metrics = broker.metrics

    def find_pipeline(self, name: str) -> Pipeline:
        """The pipeline a job names, as configured now (unknown: permanent)."""
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise PermanentError(f"pipeline {name} is not defined")
        return pipeline

    def __call__(self, envelope: Envelope, delivery: Delivery) -> None:
        body = envelope.body
        if not isinstance(body, self.expects):
            raise PermanentError(
                f"the {self.service} expects {self.expects.__name__}, not {body.type}"
            )
        with job_context(envelope.job_id, envelope.correlation_id):
            try:
                self._handle(envelope, body)  # type: ignore[arg-type]
                self.metrics.job_finished(self.service, "completed", envelope.created_at)
            except PermanentError as exc:
                self._report(envelope, body.pipeline, exc.reason)  # type: ignore[union-attr]
                raise
            except Exception as exc:
                if delivery.delivery_count + 1 >= self.settings.delivery_limit:
                    reason = exc.reason if isinstance(exc, SeriesflowError) else type(exc).__name__
                    self._report(
                        envelope,
                        body.pipeline,  # type: ignore[union-attr]
                        f"gave up after retries: {reason}",
                    )
                raise

    def dead_lettered(self, envelope: Envelope, reason: str) -> None:
        """RabbitMQ dead-lettered one of our messages (delivery limit): the job failed.

        Store errors propagate, so the broker offers the notice again later.
        """
        pipeline = getattr(envelope.body, "pipeline", None)
        if isinstance(envelope.body, self.expects) and isinstance(pipeline, str):
            with job_context(envelope.job_id, envelope.correlation_id):
                self._fail(envelope, pipeline, reason)

    def _handle(self, envelope: Envelope, body: BodyT) -> None:
        raise NotImplementedError

    def _report(self, envelope: Envelope, pipeline: str, reason: str) -> None:
        """Report the job as failed; a failure to report must not hide the original error."""
        try:
            self._fail(envelope, pipeline, reason)
        except SeriesflowError as exc:
            log.error("could not report the failure", extra={"reason": exc.reason})

    def _fail(self, envelope: Envelope, pipeline: str, reason: str) -> None:
        """Count the job as failed, store and publish its ``job.failed``."""
        self.metrics.job_finished(self.service, "failed")
        report_failure(
            self.jobs,
            self.broker,
            job_id=envelope.job_id,
            correlation_id=envelope.correlation_id,
            pipeline=pipeline,
            stage=self.service,
            reason=reason,
            producer=self.service,
        )


def run_stage(
    settings: SettingsT,
    stop: threading.Event,
    handler_class: type[JobStageHandler[BodyT, SettingsT]],
    bindings: Iterable[str],
) -> None:
    """Load the pipelines folder (a bad one fails at once), connect (retrying until stop),
    consume until ``stop`` is set. Pipelines are looked up live for every job: the folder's
    and those stored through the REST API (:class:`shared.configstore.LiveConfig`)."""
    service = handler_class.service
    folder = PipelineRegistry.load(settings.pipelines)
    static = load_config(settings.config)
    metrics = serve_metrics(service, settings)
    try:
        _consume(settings, stop, handler_class, bindings, folder, static, metrics)
    finally:
        metrics.close()


def _consume(
    settings: SettingsT,
    stop: threading.Event,
    handler_class: type[JobStageHandler[BodyT, SettingsT]],
    bindings: Iterable[str],
    folder: PipelineRegistry,
    static: SeriesflowConfig,
    metrics: Metrics,
) -> None:
    service = handler_class.service
    store = connect_store(settings, stop, metrics)
    if store is None:
        return
    broker = connect_broker(settings, service, stop, metrics)
    if broker is None:
        return
    live = LiveConfig(store, static, file_pipelines=folder)
    handler = handler_class(JobStore(store), broker, live, settings)
    log.info(f"{service} started", extra={"pipelines": [p.name for p in live.all()]})
    try:
        broker.consume(service, bindings, handler, stop, on_dead_letter=handler.dead_lettered)
    finally:
        broker.close()
        log.info(f"{service} stopped")
