"""The backbone against real RabbitMQ and a real S3 server: publish, consume, retry,
dead-letter with the reason, replay, and the store's key handling."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared import keys
from shared.broker import Broker, Delivery
from shared.errors import PermanentError, TransientError
from shared.events import Envelope, JobReceived, event_id, new_id
from shared.jobstore import JobStore, export_stage
from shared.manifest import InstanceRef, JobManifest
from shared.settings import ServiceSettings
from shared.store import (
    PART_SIZE,
    LocalDiskFullError,
    LocalFileError,
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
    _errors,
)


def received(pipeline: str, count: int) -> Envelope:
    job = new_id()
    body = JobReceived(
        pipeline=pipeline,
        manifest_key=f"jobs/{job}/manifest.json",
        instance_count=count,
        called_ae_title="SERIESFLOW",
        calling_ae_title="MODALITY",
    )
    return Envelope.wrap(body, job_id=job, producer="test", event_id=event_id(job, "received"))


def consume_until(
    broker: Broker,
    service: str,
    keys: list[str],
    handler: Callable[[Envelope, Delivery], None],
    until: Callable[[], bool],
    timeout: float = 15.0,
) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=broker.consume, args=(service, keys, handler, stop))
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert until(), "condition not reached in time"


def test_events_flow_and_failures_are_dead_lettered_with_reason(settings: ServiceSettings) -> None:
    publisher = Broker(settings, "test")
    publisher.connect(attempts=3)
    keys = ["job.received.#"]
    publisher.declare_service_queue("parser", keys)
    ok, bad, flaky = received("p1", 1), received("p1", 2), received("p1", 3)
    for env in (ok, bad, flaky):
        publisher.publish(env)
    seen: list[tuple[int, int]] = []

    def handler(env: Envelope, delivery: Delivery) -> None:
        count = env.body.instance_count  # type: ignore[union-attr]
        seen.append((count, delivery.delivery_count))
        if count == 2:
            raise PermanentError("manifest lists no instances")
        if count == 3:
            raise TransientError("store unavailable")

    consumer = Broker(settings, "parser")
    consume_until(
        consumer, "parser", keys, handler, lambda: publisher.stats("parser").dead_letters == 2
    )
    assert (1, 0) in seen
    assert [d for c, d in seen if c == 3] == list(range(settings.delivery_limit))
    stats = publisher.stats("parser")
    assert (stats.messages, stats.dead_letters) == (0, 2)
    reasons = {}
    for _ in range(2):
        _, props, body = publisher.channel.basic_get("seriesflow.parser.dead", auto_ack=False)
        reasons[Envelope.from_bytes(body).event_id] = props.headers["x-seriesflow-reason"]
        assert props.headers["x-seriesflow-routing-key"] == "job.received.p1"
    assert reasons == {
        bad.event_id: "manifest lists no instances",
        flaky.event_id: "store unavailable",
    }
    publisher.close()
    publisher.connect()
    assert publisher.replay_dead_letters("parser") == 2
    assert publisher.stats("parser").messages == 2
    publisher.close()


def test_a_malformed_message_is_dead_lettered_not_retried(settings: ServiceSettings) -> None:
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    broker.declare_service_queue("selector", ["job.parsed.#"])
    broker.channel.basic_publish("seriesflow", "job.parsed.x", b"not json")
    calls: list[Envelope] = []
    consume_until(
        Broker(settings, "selector"),
        "selector",
        ["job.parsed.#"],
        lambda env, d: calls.append(env),
        lambda: broker.stats("selector").dead_letters == 1,
    )
    assert calls == []
    broker.close()


def test_store_round_trip_and_errors(settings: ServiceSettings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.put_json("jobs/x/manifest.json", {"a": 1})
    assert store.get_json("jobs/x/manifest.json") == {"a": 1}
    assert store.exists("jobs/x/manifest.json")
    assert not store.exists("jobs/x/missing")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("jobs/x/missing")
    assert list(store.list("jobs/")) == ["jobs/x/manifest.json"]
    assert store.delete_prefix("jobs/") == 1


def test_an_unreachable_store_is_a_transient_error(settings: ServiceSettings) -> None:
    down = settings.model_copy(update={"s3_endpoint": "127.0.0.1:9"})
    with pytest.raises(TransientError):
        ObjectStore(down, timeout=1).put_bytes("a", b"x")


def test_conditional_writes_ranges_and_etags(settings: ServiceSettings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    first = store.put_bytes("config/x.json", b"0123456789", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        store.put_bytes("config/x.json", b"again", if_none_match=True)
    data, etag = store.get_with_etag("config/x.json")
    assert (data, etag) == (b"0123456789", first)
    assert store.stat("config/x.json").etag == first
    assert store.get_range("config/x.json", 2, 3) == b"234"
    assert store.get_range("config/x.json", 8, 100) == b"89"
    second = store.put_bytes("config/x.json", b"new", if_match=first)
    with pytest.raises(PreconditionFailedError):
        store.put_bytes("config/x.json", b"lost update", if_match=first)
    with pytest.raises(PreconditionFailedError):
        store.delete("config/x.json", if_match=first)
    store.delete("config/x.json", if_match=second)
    assert not store.exists("config/x.json")
    store.put_bytes("empty", b"")
    assert store.get_range("empty", 0, 10) == b""
    store.check_conditional_writes("config/probe/p.json")


def test_a_local_file_error_is_not_an_unreachable_store(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    store.put_bytes("a.dcm", b"x")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(LocalFileError) as caught:
        store.get_file("a.dcm", blocker / "below-a-file.dcm")  # NotADirectoryError
    assert "local file error" in caught.value.reason
    assert "unreachable" not in caught.value.reason
    with pytest.raises(LocalFileError):
        store.put_file("b.dcm", tmp_path / "missing.dcm")


def test_a_large_file_is_stored_in_parts_whole_and_with_its_content_type(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    """Parts go up several at a time; each carries the object's Content-Type (SeaweedFS
    otherwise gzips the chunks of a part it cannot type). Parts sent at once once shared
    one header dict, which the client fills with each request's length and signature: the
    object came out short, with no error."""
    store = ObjectStore(settings)
    store.ensure_bucket()
    data = os.urandom(5 * PART_SIZE + 1234)
    (tmp_path / "volume.nii").write_bytes(data)
    for attempt in range(3):
        store.put_file(f"out/{attempt}.nii", tmp_path / "volume.nii", "application/x-nifti")
        assert store.get_bytes(f"out/{attempt}.nii") == data
    stat = store._client.stat_object(store.bucket, "out/0.nii")
    assert stat.content_type == "application/x-nifti"
    assert stat.etag is not None and stat.etag.endswith("-6")  # six parts
    (tmp_path / "small.json").write_bytes(b"{}")
    store.put_file("out/small.json", tmp_path / "small.json", "application/json")
    assert store.get_bytes("out/small.json") == b"{}"
    (tmp_path / "empty").write_bytes(b"")
    store.put_file("out/empty", tmp_path / "empty")
    assert store.stat("out/empty").size == 0


def test_a_short_object_is_never_reported_as_stored(
    settings: ServiceSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    (tmp_path / "volume.nii").write_bytes(os.urandom(PART_SIZE + 4096))
    upload_part = store._client._upload_part

    def short_last_part(bucket: str, key: str, data: bytes, *rest: Any) -> str:
        if len(data) < PART_SIZE:  # the last part loses its tail on the way
            data = data[:-100]
        return upload_part(bucket, key, data, *rest)

    monkeypatch.setattr(store._client, "_upload_part", short_last_part)
    with pytest.raises(TransientError, match="holds 8392604 of 8392704 bytes"):
        store.put_file("out/v.nii", tmp_path / "volume.nii")


def test_a_full_local_disk_is_reported_as_such() -> None:
    with pytest.raises(LocalDiskFullError, match="local disk full"), _errors("get k", local=True):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(TransientError, match="unreachable"), _errors("get k", local=True):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")


def test_the_job_store_lists_and_deletes_a_job(settings: ServiceSettings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    jobs = JobStore(store)
    association, other = new_id(), new_id()
    job = new_id()
    instances = [
        InstanceRef(
            key=keys.incoming_instance(association, f"1.2.3.{n}"),
            sop_instance_uid=f"1.2.3.{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            series_instance_uid="1.2.3",
            study_instance_uid="1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        for n in (1, 2)
    ]
    for ref in instances:
        store.put_bytes(ref.key, b"dicom")
    store.put_json(keys.association_record(association), {"association_id": association})
    kept = keys.incoming_instance(other, "1.2.3.9")
    store.put_bytes(kept, b"another job's")
    jobs.put_manifest(
        JobManifest(
            job_id=job,
            pipeline="brain",
            called_ae_title="SF",
            calling_ae_title="CT",
            associations=[association],
            instances=instances,
        )
    )
    export = new_id()
    received = Envelope.wrap(
        JobReceived(
            pipeline="brain",
            manifest_key=keys.manifest(job),
            instance_count=2,
            called_ae_title="SF",
            calling_ae_title="CT",
        ),
        job_id=job,
        producer="test",
        event_id=event_id(job, "received"),
    )
    jobs.record_event(job, "received", received)
    jobs.record_event(job, export_stage(export), received)
    jobs.put_export_state(export, b"{}")
    jobs.put_output(job, "selected-images.json", b"{}")
    (listed,) = jobs.list_jobs()
    assert (listed.job_id, listed.pipeline, listed.stage, listed.state) == (
        job,
        "brain",
        "received",
        "running",
    )
    assert listed.export_requests == 1
    assert (
        jobs.delete_job(job) == 2 + 1 + 1 + 3 + 1
    )  # instances, record, state, events+output, manifest
    assert jobs.list_jobs() == []
    assert jobs.job(job) is None
    assert list(store.list("")) == [kept]
