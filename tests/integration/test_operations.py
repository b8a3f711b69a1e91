"""``seriesflow status`` and ``seriesflow replay --dead-letters`` against real RabbitMQ and S3."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from seriesflow.cli import app
from shared.broker import Broker
from shared.events import Envelope, JobReceived, event_id, new_id
from shared.keys import event
from shared.settings import ServiceSettings
from shared.store import ObjectStore


@pytest.fixture
def env(settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    monkeypatch.setenv("SERIESFLOW_AMQP_URL", settings.amqp_url.get_secret_value())
    monkeypatch.setenv("SERIESFLOW_S3_ENDPOINT", settings.s3_endpoint)
    monkeypatch.setenv("SERIESFLOW_S3_ACCESS_KEY", settings.s3_access_key.get_secret_value())
    monkeypatch.setenv("SERIESFLOW_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
    monkeypatch.setenv("SERIESFLOW_S3_BUCKET", settings.s3_bucket)
    return settings


def job_event(job: str) -> Envelope:
    body = JobReceived(
        pipeline="ops",
        manifest_key=f"jobs/{job}/manifest.json",
        instance_count=1,
        called_ae_title="SERIESFLOW",
        calling_ae_title="MODALITY",
    )
    return Envelope.wrap(body, job_id=job, producer="test", event_id=event_id(job, "received"))


def test_status_shows_queues_dead_letters_and_jobs(env: ServiceSettings) -> None:
    store = ObjectStore(env)
    store.ensure_bucket()
    job = new_id()
    envelope = job_event(job)
    store.put_bytes(event(job, "received"), envelope.to_bytes())
    broker = Broker(env, "test")
    broker.connect(attempts=3)
    broker.declare_service_queue("parser", ["job.received.#"])
    broker.publish(envelope)
    broker.channel.basic_publish("seriesflow.dead", "parser", envelope.to_bytes())
    result = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    parser_row = next(line for line in result.output.splitlines() if "seriesflow.parser " in line)
    cells = [cell.strip() for cell in parser_row.split("│")[2:5]]
    assert cells == ["1", "0", "1"]  # messages, consumers, dead letters
    assert job in result.output and "received" in result.output
    broker.close()


def test_replay_dead_letters_puts_them_back_on_their_routing_key(env: ServiceSettings) -> None:
    broker = Broker(env, "test")
    broker.connect(attempts=3)
    broker.declare_service_queue("parser", ["job.received.#"])
    headers = {
        "x-seriesflow-reason": "store unavailable",
        "x-seriesflow-routing-key": "job.received.ops",
    }
    dead = job_event(new_id())
    broker._publish("seriesflow.dead", "parser", dead.to_bytes(), dead, headers)
    assert broker.stats("parser").dead_letters == 1
    result = CliRunner().invoke(app, ["replay", "--dead-letters", "parser"])
    assert result.exit_code == 0, result.output
    assert "1 dead letter" in result.output
    stats = broker.stats("parser")
    assert (stats.messages, stats.dead_letters) == (1, 0)
    _, props, body = broker.channel.basic_get("seriesflow.parser", auto_ack=True)
    assert Envelope.from_bytes(body).event_id == dead.event_id
    assert "x-seriesflow-reason" not in props.headers and props.headers["x-seriesflow-replayed"]
    broker.close()


def test_operations_without_a_broker_are_a_clear_error(
    env: ServiceSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERIESFLOW_AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2F")
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1
    assert "RabbitMQ" in result.output and "Traceback" not in result.output
