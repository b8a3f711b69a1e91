"""Dead letters against a real RabbitMQ vhost (issue 9, 8): a message RabbitMQ itself
dead-letters at the delivery limit is reported; an envelope of an unknown version, or one
carrying an object key with ``..``, is dead-lettered at once with the reason, never retried.

Consumers that die on a message are played by raw pika connections that take the message
and close without acknowledging, as a SIGKILLed process does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from services.exporter.main import ExporterService
from services.exporter.settings import ExporterSettings
from services.parser.main import ParserService
from shared import keys
from shared.broker import Broker, Delivery, dead_letter_queue, queue_name
from shared.events import (
    EXCHANGE,
    Envelope,
    ExportCompleted,
    ExportRequested,
    JobFailed,
    JobReceived,
    event_id,
    new_id,
)
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import free_port
from .processes import wait_until

SERVICE = "parser"
BINDINGS = ("job.received.#",)


@pytest.fixture
def broker(settings: ServiceSettings) -> Iterator[Broker]:
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    yield broker
    broker.close()


def received(job_id: str) -> Envelope:
    return Envelope.wrap(
        JobReceived(
            pipeline="brain",
            manifest_key=f"jobs/{job_id}/manifest.json",
            instance_count=1,
            called_ae_title="SERIESFLOW",
            calling_ae_title="MODALITY",
        ),
        job_id=job_id,
        producer="receiver",
        event_id=event_id(job_id, "received"),
    )


def die_on_deliveries(url: str, queue: str, times: int) -> int:
    """Take the queue's next message and vanish without an answer, ``times`` times."""
    taken = 0
    for _ in range(times):
        connection = pika.BlockingConnection(pika.URLParameters(url))
        method, _, _ = connection.channel().basic_get(queue, auto_ack=False)
        connection.close()
        if method is None:
            break
        taken += 1
    return taken


def dead_letter(broker: Broker, service: str) -> tuple[dict[str, Any], bytes] | None:
    method, properties, body = broker.channel.basic_get(dead_letter_queue(service), auto_ack=True)
    if method is None:
        return None
    return dict(properties.headers or {}), body


def pacs_config(folder: Path) -> Path:
    """A configuration file with destination ``pacs``, where nothing listens."""
    config = folder / "seriesflow.yaml"
    config.write_text(
        "dicom:\n  scu:\n    ae-title: SERIESFLOW\n    destinations:\n"
        f"      - name: pacs\n        host-ip: 127.0.0.1\n        port: {free_port()}\n"
        "        ae-title: PACS\n"
    )
    return config


class Consumer:
    """``Broker.consume`` in a thread, recording what reaches the handler and the callback."""

    def __init__(self, settings: ServiceSettings, with_notices: bool = True) -> None:
        self.broker = Broker(settings, SERVICE)
        self.handled: list[tuple[Envelope, Delivery]] = []
        self.reported: list[tuple[Envelope, str]] = []
        self.stop = threading.Event()
        self.with_notices = with_notices
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.broker.connect(attempts=3)

        def handle(envelope: Envelope, delivery: Delivery) -> None:
            self.handled.append((envelope, delivery))

        def report(envelope: Envelope, reason: str) -> None:
            self.reported.append((envelope, reason))

        try:
            if self.with_notices:
                self.broker.consume(SERVICE, BINDINGS, handle, self.stop, on_dead_letter=report)
            else:  # as on a service that does not ask for notices
                self.broker.consume(SERVICE, BINDINGS, handle, self.stop)
        finally:
            self.broker.close()

    def __enter__(self) -> Consumer:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stop.set()
        self.thread.join(15)


def test_a_message_rabbitmq_dead_letters_at_the_delivery_limit_is_reported(
    settings: ServiceSettings, broker: Broker, amqp_url: str
) -> None:
    broker.declare_service_queue(SERVICE, BINDINGS, notices=True)
    job = new_id()
    broker.publish(received(job))
    # The consumer dies on the message every time: RabbitMQ gives up after the limit.
    taken = die_on_deliveries(amqp_url, queue_name(SERVICE), settings.delivery_limit + 3)
    assert taken == settings.delivery_limit + 1
    with Consumer(settings) as consumer:
        wait_until(lambda: bool(consumer.reported), 15, "the dead letter to be reported")
        time.sleep(1.5)  # a second pass over the notices reports nothing twice
    assert consumer.handled == []
    ((envelope, reason),) = consumer.reported
    assert envelope.job_id == job
    assert "delivery limit" in reason
    assert broker.stats(SERVICE).dead_letters == 1  # still there, for replay


def test_a_job_the_parser_dies_on_every_time_is_reported_failed(
    settings: ServiceSettings, broker: Broker, amqp_url: str
) -> None:
    """Issue 9, 8: such a job showed "received" forever; now the parser stores and
    publishes job.failed when RabbitMQ gives up on it."""
    store = ObjectStore(settings)
    store.ensure_bucket()
    broker.declare_service_queue(SERVICE, BINDINGS, notices=True)  # as at the parser's start
    job = new_id()
    broker.publish(received(job))
    die_on_deliveries(amqp_url, queue_name(SERVICE), settings.delivery_limit + 3)
    with ParserService(settings):
        wait_until(lambda: store.exists(keys.event(job, "failed")), 30, "job.failed stored")
    failure = Envelope.from_bytes(store.get_bytes(keys.event(job, "failed")))
    assert isinstance(failure.body, JobFailed)
    assert (failure.job_id, failure.body.stage, failure.body.pipeline) == (job, "parser", "brain")
    assert "delivery limit" in failure.body.reason


def test_an_export_the_exporter_dies_on_every_time_is_published_failed(
    settings: ServiceSettings, broker: Broker, amqp_url: str, tmp_path: Path
) -> None:
    exporter_settings = ExporterSettings(
        **{**settings.model_dump(), "config": pacs_config(tmp_path)}
    )
    broker.declare_service_queue("exporter", ("export.requested.#",), notices=True)
    job, export_id = new_id(), new_id()
    request = ExportRequested(
        export_id=export_id,
        destination="pacs",
        pipeline="brain",
        selection="T1",
        instance_keys=[f"incoming/{new_id()}/1.2.3.dcm"],
    )
    broker.publish(Envelope.wrap(request, job_id=job, producer="selector", event_id=new_id()))
    die_on_deliveries(amqp_url, queue_name("exporter"), settings.delivery_limit + 3)
    store = ObjectStore(settings)
    stored = keys.event(job, f"exported-{export_id}")
    with ExporterService(exporter_settings):
        wait_until(lambda: store.exists(stored), 30, "export.completed stored")
    completed = Envelope.from_bytes(store.get_bytes(stored))
    assert isinstance(completed.body, ExportCompleted)
    assert (completed.body.status, completed.body.destination) == ("failed", "pacs")


def test_a_message_seriesflow_dead_letters_itself_is_not_reported_twice(
    settings: ServiceSettings, broker: Broker
) -> None:
    broker.declare_service_queue(SERVICE, BINDINGS, notices=True)
    raw = json.loads(received(new_id()).to_bytes())
    raw["job_id"] = "not-an-id"
    broker.channel.basic_publish(EXCHANGE, "job.received.brain", json.dumps(raw).encode())
    with Consumer(settings) as consumer:
        wait_until(lambda: broker.stats(SERVICE).dead_letters == 1, 15, "the dead letter")
        time.sleep(1.5)
    assert consumer.reported == [] and consumer.handled == []


def test_an_unknown_envelope_version_is_dead_lettered_with_the_reason(
    settings: ServiceSettings, broker: Broker
) -> None:
    broker.declare_service_queue(SERVICE, BINDINGS)
    raw = json.loads(received(new_id()).to_bytes())
    raw["version"] = 2
    broker.channel.basic_publish(EXCHANGE, "job.received.brain", json.dumps(raw).encode())
    with Consumer(settings, with_notices=False) as consumer:
        wait_until(lambda: broker.stats(SERVICE).dead_letters == 1, 15, "the dead letter")
    assert consumer.handled == []
    found = dead_letter(broker, SERVICE)
    assert found is not None
    headers, _ = found
    assert "version 2 is not supported" in headers["x-seriesflow-reason"]
    assert headers["x-seriesflow-error"] == "InvalidInputError"


def test_an_export_key_with_dot_dot_is_dead_lettered_at_once_not_retried(
    settings: ServiceSettings, broker: Broker, tmp_path: Path
) -> None:
    exporter_settings = ExporterSettings(
        **{**settings.model_dump(), "config": pacs_config(tmp_path)}
    )
    broker.declare_service_queue("exporter", ("export.requested.#",))
    job = new_id()
    good = ExportRequested(
        export_id=new_id(),
        destination="pacs",
        pipeline="brain",
        selection="T1",
        instance_keys=[f"incoming/{new_id()}/1.2.3.dcm"],
    )
    raw = json.loads(
        Envelope.wrap(good, job_id=job, producer="selector", event_id=new_id()).to_bytes()
    )
    raw["body"]["instance_keys"] = ["incoming/../jobs/secret.dcm"]
    broker.channel.basic_publish(EXCHANGE, "export.requested.pacs", json.dumps(raw).encode())
    with ExporterService(exporter_settings):
        wait_until(lambda: broker.stats("exporter").dead_letters == 1, 30, "the dead letter")
    found = dead_letter(broker, "exporter")
    assert found is not None
    headers, _ = found
    assert headers["x-seriesflow-error"] == "InvalidInputError", headers
    assert "'..'" in headers["x-seriesflow-reason"]
    assert int(headers.get("x-delivery-count", 0)) == 0  # the first delivery, no retry


def test_replaying_a_service_that_never_ran_replays_nothing(broker: Broker) -> None:
    """A dead-letter queue that was never declared holds nothing: 0, not a broker error
    (the console's replay answered 500 for it), and the broker stays usable."""
    assert broker.replay_dead_letters("selector") == 0
    broker.declare_service_queue("selector", ("job.parsed.#",))
    assert broker.replay_dead_letters("selector") == 0
