"""Prometheus metrics: every definition in one place, one :class:`Metrics` per service.

A service builds one :class:`Metrics` at start (:func:`serve_metrics`), which owns its own
:class:`prometheus_client.CollectorRegistry` (no process-wide default registry: two
services in one process, as in tests, never mix their counts) and, when
``SERIESFLOW_METRICS_PORT`` is not 0, an HTTP server answering ``GET /metrics`` on
``SERIESFLOW_METRICS_HOST``. The object is passed down to what counts: the broker
(:class:`shared.broker.Broker`), the object store (:class:`shared.store.ObjectStore`),
the stage skeleton (:mod:`services.stage`), the receiver's handlers and the exporter.

Labels carry fixed vocabularies only: service and stage names, outcomes, event types,
DIMSE status codes, error class names, the fixed reasons an association is refused.
Never a UID, a patient attribute, a peer's AE title or address, a job ID. The metric list
is in ``docs/metrics.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from shared.logs import get_logger
from shared.settings import ServiceSettings

log = get_logger("metrics")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Seconds; a stage takes from a fraction of a second (selector) to minutes (big exports)."""


class Metrics:
    """One service's metrics, on a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        r = self.registry
        # receiver
        self.instances_received = Counter(
            "seriesflow_instances_received",
            "DICOM instances stored durably by the receiver (C-STORE answered Success)",
            registry=r,
        )
        self.bytes_received = Counter(
            "seriesflow_received_bytes",
            "Bytes of the instances stored by the receiver (Part 10 files)",
            registry=r,
        )
        self.cstore_responses = Counter(
            "seriesflow_cstore_responses",
            "C-STORE responses by DIMSE status code (0x0000 Success)",
            ["status"],
            registry=r,
        )
        self.associations_open = Gauge(
            "seriesflow_associations_open", "DICOM associations open now", registry=r
        )
        self.associations_accepted = Counter(
            "seriesflow_associations_accepted", "DICOM associations accepted", registry=r
        )
        self.associations_refused = Counter(
            "seriesflow_associations_refused",
            "DICOM association requests rejected, by reason",
            ["reason"],
            registry=r,
        )
        # stages (parser, selector, exporter)
        self.jobs = Counter(
            "seriesflow_jobs",
            "Jobs a stage finished, by outcome (completed, failed)",
            ["stage", "outcome"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "seriesflow_stage_latency_seconds",
            "From the event a stage consumed being published (job released, parsed, "
            "selected) to the stage finishing the job",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.export_files = Counter(
            "seriesflow_export_files",
            "Files the exporter recorded, by status (sent, failed, skipped)",
            ["status"],
            registry=r,
        )
        # broker and store
        self.events_published = Counter(
            "seriesflow_events_published",
            "Events published (confirmed by RabbitMQ), by type",
            ["service", "type"],
            registry=r,
        )
        self.retries = Counter(
            "seriesflow_retries",
            "Messages requeued for another delivery after a transient failure",
            ["service"],
            registry=r,
        )
        self.dead_letters = Counter(
            "seriesflow_dead_letters",
            "Messages dead-lettered: by seriesflow (permanent error, retries exhausted) or "
            "by RabbitMQ (delivery limit, consumer died each time)",
            ["service", "by"],
            registry=r,
        )
        self.broker_errors = Counter(
            "seriesflow_broker_errors",
            "RabbitMQ errors: connection lost while consuming or publishing, message refused",
            ["service", "kind"],
            registry=r,
        )
        self.store_errors = Counter(
            "seriesflow_store_errors",
            "Object store operations that failed, by the error raised",
            ["service", "error"],
            registry=r,
        )

    # -- receiver ---------------------------------------------------------------------------

    def instance_received(self, size: int) -> None:
        self.instances_received.inc()
        self.bytes_received.inc(size)

    def cstore_answered(self, status: int) -> int:
        """Count a C-STORE response status; returns it, to wrap a handler's return."""
        self.cstore_responses.labels(status=f"0x{status:04X}").inc()
        return status

    def association_refused(self, reason: str) -> None:
        self.associations_refused.labels(reason=reason).inc()

    def track_open_associations(self, count: Callable[[], int]) -> None:
        self.associations_open.set_function(lambda: float(count()))

    # -- stages -----------------------------------------------------------------------------

    def job_finished(self, stage: str, outcome: str, since: datetime | None = None) -> None:
        """A stage finished a job; ``since``: when the event it consumed was published."""
        self.jobs.labels(stage=stage, outcome=outcome).inc()
        if since is not None and outcome == "completed":
            since = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
            seconds = (datetime.now(UTC) - since).total_seconds()
            self.stage_latency.labels(stage=stage).observe(max(seconds, 0.0))

    def export_file(self, status: str) -> None:
        self.export_files.labels(status=status).inc()

    def export_finished(self, status: str, files: Iterable[str], since: datetime) -> None:
        """An ``export.completed`` published: the job's exporter outcome, its files."""
        self.job_finished("exporter", "completed" if status == "succeeded" else "failed", since)
        for file_status in files:
            self.export_file(file_status)

    # -- broker and store -------------------------------------------------------------------

    def published(self, event_type: str) -> None:
        self.events_published.labels(service=self.service, type=event_type).inc()

    def retried(self) -> None:
        self.retries.labels(service=self.service).inc()

    def dead_lettered(self, by: str) -> None:
        self.dead_letters.labels(service=self.service, by=by).inc()

    def broker_error(self, kind: str) -> None:
        self.broker_errors.labels(service=self.service, kind=kind).inc()

    def store_error(self, error: BaseException) -> None:
        self.store_errors.labels(service=self.service, error=type(error).__name__).inc()

    # -- exposition -------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format ``GET /metrics`` answers."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int | None:
        """Answer ``GET /metrics`` on ``host:port`` in a daemon thread; returns the port.

        Metrics never stop a service: a port in use is logged and the service runs without.
        """
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            log.warning(
                "metrics not served: cannot listen",
                extra={"host": host, "port": port, "error": exc.strerror or type(exc).__name__},
            )
            return None
        bound = int(self._server.server_address[1])
        log.info("metrics served", extra={"host": host, "port": bound, "path": "/metrics"})
        return bound

    def serve_as_configured(self, settings: ServiceSettings) -> None:
        """Serve on ``SERIESFLOW_METRICS_HOST:SERIESFLOW_METRICS_PORT`` unless the port is 0."""
        if settings.metrics_port:
            self.serve(settings.metrics_port, settings.metrics_host)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def serve_metrics(service: str, settings: ServiceSettings) -> Metrics:
    """The service's metrics, served when ``SERIESFLOW_METRICS_PORT`` is not 0."""
    metrics = Metrics(service)
    metrics.serve_as_configured(settings)
    return metrics
