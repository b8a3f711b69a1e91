"""The parser and selector services against real RabbitMQ and a real S3 server.

A job is put into the store the way the receiver puts it there (instances under
``incoming/<association>/``, the manifest, the stored ``received`` event) and announced
with ``job.received``; the parser and selector run in threads, and a test queue bound to
the events they publish observes them. Service mode must give exactly operator mode's
outputs, and redelivery and replay must change nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pydicom
import pytest
import yaml

from services.parser.handlers import BINDINGS as PARSER_BINDINGS
from services.parser.main import ParserService
from services.replay import replay_job
from services.selector.handlers import BINDINGS as SELECTOR_BINDINGS
from services.selector.main import SelectorService
from shared import keys
from shared.broker import SERVICE_POLL_SECONDS, Broker
from shared.dicom.metadata import METADATA_FILE, SELECTED_IMAGES_FILE, SERIES_IMAGES_FILE
from shared.events import (
    Envelope,
    ExportRequested,
    JobFailed,
    JobParsed,
    JobReceived,
    JobSelected,
    event_id,
    new_id,
)
from shared.jobstore import JobStore
from shared.manifest import InstanceRef, JobManifest
from shared.operator.parser import run_parser_operator
from shared.samples import write_brain_mr_study
from shared.selection import load_rules_file, parse_rules
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from shared.volumes.convert import ConversionOptions

REPO = Path(__file__).resolve().parents[2]
T1C_RULES = REPO / "examples" / "rules" / "clara-t1c.json"
CLARA_PIPELINE = """\
api-version: 0.4.0
name: series-selection-pipeline
operators:
- name: dicom-parser
  description: Converts DICOM instances into image files, one per DICOM series.
  container:
    image: clara/dicom-parser
    tag: latest
  input:
  - path: /input
  output:
  - path: /output
- name: series-selection
  description: Selects the image file(s) for the matched series.
  container:
    image: clara/series-selector
    tag: latest
  input:
  - from: dicom-parser
    path: /input
  output:
  - path: /output
    name: selections
"""


# -- the job as the receiver leaves it ---------------------------------------------------


@dataclass
class Job:
    job_id: str
    received: Envelope
    manifest: JobManifest


def brain_study(folder: Path, seed: int) -> Path:
    write_brain_mr_study(folder, seed=seed)
    return folder


def submit(store: ObjectStore, broker: Broker, study: Path, pipeline: str) -> Job:
    """Store the study's instances and manifest as the receiver does, publish job.received."""
    job, association = new_id(), new_id()
    files = sorted(p for p in study.rglob("*") if p.is_file())

    def put(path: Path) -> InstanceRef:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        key = keys.incoming_instance(association, str(ds.SOPInstanceUID))
        store.put_file(key, path)
        return InstanceRef.from_dataset(key, ds)

    with ThreadPoolExecutor(8) as pool:
        instances = list(pool.map(put, files))
    manifest = JobManifest(
        job_id=job,
        pipeline=pipeline,
        called_ae_title="SERIESFLOW",
        calling_ae_title="MODALITY",
        associations=[association],
        instances=instances,
    )
    store.put_bytes(keys.manifest(job), manifest.model_dump_json().encode(), "application/json")
    received = received_event(job, pipeline, len(instances))
    store.put_bytes(keys.event(job, "received"), received.to_bytes(), "application/json")
    broker.publish(received)
    return Job(job, received, manifest)


def received_event(job: str, pipeline: str, count: int) -> Envelope:
    body = JobReceived(
        pipeline=pipeline,
        manifest_key=keys.manifest(job),
        instance_count=count,
        called_ae_title="SERIESFLOW",
        calling_ae_title="MODALITY",
    )
    return Envelope.wrap(body, job_id=job, producer="receiver", event_id=event_id(job, "received"))


def write_pipeline(folder: Path, name: str, image_format: str, routes: list[Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    definition = {
        "name": name,
        "image-format": image_format,
        "rules-file": str(T1C_RULES),
        "routes": routes,
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(definition))
    return folder


# -- watching the exchange ---------------------------------------------------------------


@dataclass
class Observer:
    """A private queue bound to what the parser and selector publish."""

    broker: Broker
    queue: str = ""
    seen: list[tuple[str, Envelope]] = field(default_factory=list)

    def __post_init__(self) -> None:
        channel = self.broker.channel
        self.queue = channel.queue_declare("", exclusive=True).method.queue
        for key in ("job.parsed.#", "job.selected.#", "job.failed.#", "export.requested.#"):
            channel.queue_bind(self.queue, "seriesflow", routing_key=key)

    def drain(self) -> None:
        while True:
            method, _, body = self.broker.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return
            self.seen.append((method.routing_key, Envelope.from_bytes(body)))

    def of(self, kind: type[Any], job: str | None = None) -> list[Envelope]:
        return [e for _, e in self.seen if isinstance(e.body, kind) and job in (None, e.job_id)]

    def wait(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"not observed in {timeout} s; seen {[k for k, _ in self.seen]}")

    def count(self, kind: type[Any], job: str, n: int) -> Callable[[], bool]:
        return lambda: len(self.of(kind, job)) >= n


@dataclass
class Flow:
    settings: ServiceSettings
    store: ObjectStore
    broker: Broker
    observer: Observer
    parser: ParserService
    selector: SelectorService

    def stop(self) -> None:
        """Stop both services (each finishes the message in hand), then read what is left."""
        self.parser.stop()
        self.selector.stop()
        assert self.parser.error is None and self.selector.error is None
        self.observer.drain()


@contextmanager
def running(settings: ServiceSettings, pipelines: Path) -> Iterator[Flow]:
    configured = settings.model_copy(update={"pipelines": pipelines})
    store = ObjectStore(configured)
    store.ensure_bucket()
    broker = Broker(configured, "test")
    broker.connect(attempts=3)
    broker.declare_service_queue("parser", PARSER_BINDINGS)
    broker.declare_service_queue("selector", SELECTOR_BINDINGS)
    flow = Flow(
        configured,
        store,
        broker,
        Observer(broker),
        ParserService(configured).start(),
        SelectorService(configured).start(),
    )
    try:
        yield flow
    finally:
        flow.parser.stop()
        flow.selector.stop()
        broker.close()


def outputs(store: ObjectStore, job: str) -> dict[str, bytes]:
    prefix = keys.output_prefix(job)
    return {k.removeprefix(prefix): store.get_bytes(k) for k in store.list(prefix)}


def listing(store: ObjectStore, job: str) -> dict[str, tuple[str | None, Any, int | None]]:
    """Every object of the job with its ETag, modification time and size."""
    infos = [store.stat(key) for key in store.list(keys.job_prefix(job))]
    return {i.key: (i.etag, i.modified, i.size) for i in infos}


def stored(store: ObjectStore, job: str, stage: str) -> Envelope:
    return Envelope.from_bytes(store.get_bytes(keys.event(job, stage)))


def without_paths(document: Any) -> Any:
    """dicom-metadata.json without source file paths (local names differ by mode)."""
    if isinstance(document, dict):
        return {k: without_paths(v) for k, v in document.items() if k != "path"}
    if isinstance(document, list):
        return [without_paths(v) for v in document]
    return document


def t1c_instances(study: Path) -> tuple[str, set[str]]:
    """The post-contrast T1's SeriesInstanceUID and SOP Instance UIDs, read from the files."""
    series: set[str] = set()
    sops: set[str] = set()
    for path in study.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            description = str(ds.get("SeriesDescription", ""))
            if "T1c" in description and "ref" not in description:
                series.add(str(ds.SeriesInstanceUID))
                sops.add(str(ds.SOPInstanceUID))
    assert len(series) == 1
    return series.pop(), sops


# -- the tests ---------------------------------------------------------------------------


def test_a_brain_study_is_parsed_and_selected_exactly_as_operator_mode_does(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    study = brain_study(tmp_path / "study", seed=11)
    pipelines = write_pipeline(
        tmp_path / "pipelines", "brain", "nii.gz", [{"selection": "T1C", "destinations": ["PACS"]}]
    )
    operator_out = tmp_path / "operator"
    run_parser_operator(
        study, operator_out, ConversionOptions("nii.gz"), load_rules_file(T1C_RULES)
    )
    with running(settings, pipelines) as flow:
        job = submit(flow.store, flow.broker, study, "brain")
        flow.observer.wait(flow.observer.count(ExportRequested, job.job_id, 1))
        flow.stop()

    store = flow.store
    service = outputs(store, job.job_id)
    expected = {p.name: p.read_bytes() for p in operator_out.iterdir()}
    assert sorted(service) == sorted(expected)
    images = [n for n in expected if n.endswith(".nii.gz")]
    assert len(images) == 6
    for name in images:
        assert service[name] == expected[name], f"{name} differs from operator mode"
    for name in (SELECTED_IMAGES_FILE, SERIES_IMAGES_FILE):
        assert json.loads(service[name]) == json.loads(expected[name])
        assert service[name] == expected[name]
    assert without_paths(json.loads(service[METADATA_FILE])) == without_paths(
        json.loads(expected[METADATA_FILE])
    )

    t1c_series, t1c_sops = t1c_instances(study)
    selections = json.loads(service[SELECTED_IMAGES_FILE])
    assert selections == {"T1C": {t1c_series: f"{t1c_series}.nii.gz"}}

    observer = flow.observer
    (parsed,) = observer.of(JobParsed, job.job_id)
    (selected,) = observer.of(JobSelected, job.job_id)
    (export,) = observer.of(ExportRequested, job.job_id)
    assert parsed.event_id == event_id(job.job_id, "parsed")
    assert parsed.correlation_id == job.received.correlation_id
    assert isinstance(parsed.body, JobParsed)
    assert sorted(parsed.body.image_keys) == sorted(keys.output(job.job_id, n) for n in images)
    assert selected.event_id == event_id(job.job_id, "selected")
    assert isinstance(selected.body, JobSelected)
    assert selected.body.selections == selections
    assert selected.body.selected_images_key == keys.output(job.job_id, SELECTED_IMAGES_FILE)
    assert isinstance(export.body, ExportRequested)
    assert export.routing_key == "export.requested.PACS"
    assert export.body.export_id == event_id(job.job_id, "export", "T1C", "PACS")
    assert (export.body.destination, export.body.selection) == ("PACS", "T1C")
    expected_keys = {keys.incoming_instance(job.manifest.associations[0], s) for s in t1c_sops}
    assert len(export.body.instance_keys) == len(expected_keys) == 24
    assert set(export.body.instance_keys) == expected_keys
    assert observer.of(JobFailed) == []

    events = sorted(store.list(keys.job_prefix(job.job_id) + "events/"))
    assert [e.rsplit("/", 1)[1] for e in events] == sorted(
        ["received.json", "parsed.json", "selected.json", f"export-{export.body.export_id}.json"]
    )
    assert stored(store, job.job_id, "parsed") == parsed
    assert stored(store, job.job_id, "selected") == selected
    assert stored(store, job.job_id, f"export-{export.body.export_id}") == export


def test_redelivered_events_change_nothing_and_repeat_the_same_events(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    study = brain_study(tmp_path / "study", seed=12)
    pipelines = write_pipeline(
        tmp_path / "pipelines", "brain", "mhd", [{"selection": "T1C", "destinations": ["PACS"]}]
    )
    with running(settings, pipelines) as flow:
        job = submit(flow.store, flow.broker, study, "brain")
        observer = flow.observer
        observer.wait(observer.count(ExportRequested, job.job_id, 1))
        before = listing(flow.store, job.job_id)
        before_bytes = outputs(flow.store, job.job_id)
        time.sleep(1.1)  # a rewrite would now show in the modification times
        flow.broker.publish(job.received)  # RabbitMQ redelivers job.received ...
        flow.broker.publish(stored(flow.store, job.job_id, "parsed"))  # ... and job.parsed
        observer.wait(observer.count(ExportRequested, job.job_id, 3))
        flow.stop()

    assert listing(flow.store, job.job_id) == before
    assert outputs(flow.store, job.job_id) == before_bytes
    for kind, stage in ((JobParsed, "parsed"), (JobSelected, "selected")):
        seen = observer.of(kind, job.job_id)
        assert len(seen) == 3
        assert all(e == stored(flow.store, job.job_id, stage) for e in seen)
    exports = observer.of(ExportRequested, job.job_id)
    assert len(exports) == 3 and len({e.to_bytes() for e in exports}) == 1
    assert observer.of(JobFailed) == []


def test_replaying_a_job_gives_identical_outputs(settings: ServiceSettings, tmp_path: Path) -> None:
    study = brain_study(tmp_path / "study", seed=13)
    pipelines = write_pipeline(
        tmp_path / "pipelines", "brain", "nii", [{"selection": "T1C", "destinations": ["PACS"]}]
    )
    with running(settings, pipelines) as flow:
        store, observer = flow.store, flow.observer
        job = submit(store, flow.broker, study, "brain")
        observer.wait(observer.count(ExportRequested, job.job_id, 1))
        original = outputs(store, job.job_id)
        events = {s: stored(store, job.job_id, s) for s in ("parsed", "selected")}
        (export,) = observer.of(ExportRequested, job.job_id)
        export_stage = f"export-{export.event_id}"

        # Everything stored: every event is re-published; nothing is computed again.
        assert replay_job(JobStore(store), flow.broker, job.job_id) == 4
        observer.wait(observer.count(ExportRequested, job.job_id, 4))
        assert outputs(store, job.job_id) == original

        # Outputs and later events gone: replaying job.received computes them again.
        store.delete_prefix(keys.output_prefix(job.job_id))
        for stage in ("parsed", "selected", export_stage):
            store.delete(keys.event(job.job_id, stage))
        assert replay_job(JobStore(store), flow.broker, job.job_id) == 1
        observer.wait(observer.count(ExportRequested, job.job_id, 5))
        flow.stop()

    assert outputs(store, job.job_id) == original
    assert len(observer.of(JobSelected, job.job_id)) == 5
    for stage, before in events.items():
        after = stored(store, job.job_id, stage)
        assert (after.event_id, after.body) == (before.event_id, before.body)
    again = stored(store, job.job_id, export_stage)
    assert (again.event_id, again.body) == (export.event_id, export.body)
    assert observer.of(JobFailed) == []


def test_poison_messages_are_dead_lettered_with_their_reason_and_reported(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    study = brain_study(tmp_path / "study", seed=14)
    pipelines = write_pipeline(tmp_path / "pipelines", "brain", "mhd", [])
    with running(settings, pipelines) as flow:
        store, broker, observer = flow.store, flow.broker, flow.observer
        no_manifest = received_event(new_id(), "brain", 3)
        unknown = received_event(new_id(), "nosuch", 3)
        broker.publish(no_manifest)
        broker.publish(unknown)
        no_outputs = new_id()
        broker.publish(
            Envelope.wrap(
                JobParsed(
                    pipeline="brain",
                    metadata_key=keys.output(no_outputs, METADATA_FILE),
                    series_images_key=keys.output(no_outputs, SERIES_IMAGES_FILE),
                    image_keys=[],
                ),
                job_id=no_outputs,
                producer="test",
                event_id=event_id(no_outputs, "parsed"),
            )
        )
        good = submit(store, broker, study, "brain")
        observer.wait(observer.count(JobSelected, good.job_id, 1))
        observer.wait(lambda: len(observer.of(JobFailed)) == 3)
        flow.stop()

        assert broker.stats("parser").dead_letters == 2
        assert broker.stats("selector").dead_letters == 1
        reasons: dict[str, str] = {}
        for service in ("parser", "selector"):
            while True:
                method, props, body = broker.channel.basic_get(
                    f"seriesflow.{service}.dead", auto_ack=True
                )
                if method is None:
                    break
                reasons[Envelope.from_bytes(body).job_id] = props.headers["x-seriesflow-reason"]

    assert reasons == {
        no_manifest.job_id: f"the manifest of job {no_manifest.job_id} is missing",
        unknown.job_id: "pipeline nosuch is not defined",
        no_outputs: f"the parser's outputs of job {no_outputs} are missing",
    }
    failures = {e.job_id: (key, e) for key, e in observer.seen if isinstance(e.body, JobFailed)}
    assert set(failures) == set(reasons)
    for job_id, (routing_key, failure) in failures.items():
        assert isinstance(failure.body, JobFailed)
        assert failure.body.reason == reasons[job_id]
        assert failure.body.stage == ("selector" if job_id == no_outputs else "parser")
        assert failure.event_id == event_id(job_id, "failed", failure.body.stage)
        assert routing_key == f"job.failed.{failure.body.pipeline}"
        assert stored(store, job_id, "failed") == failure
    assert failures[unknown.job_id][0] == "job.failed.nosuch"
    assert observer.of(JobFailed, good.job_id) == []
    assert SELECTED_IMAGES_FILE in outputs(store, good.job_id)


def test_a_clara_pipeline_definition_selects_every_converted_series(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    study = brain_study(tmp_path / "study", seed=15)
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "series-selection-pipeline.yaml").write_text(CLARA_PIPELINE)
    operator_out = tmp_path / "operator"
    run_parser_operator(study, operator_out, ConversionOptions(), parse_rules(None))
    with running(settings, pipelines) as flow:
        job = submit(flow.store, flow.broker, study, "series-selection-pipeline")
        flow.observer.wait(flow.observer.count(JobSelected, job.job_id, 1))
        flow.stop()

    service = outputs(flow.store, job.job_id)
    series_images = json.loads(service[SERIES_IMAGES_FILE])
    assert len(series_images) == 6
    selections = json.loads(service[SELECTED_IMAGES_FILE])
    assert selections == {uid: {uid: image} for uid, image in series_images.items()}
    assert selections == json.loads((operator_out / SELECTED_IMAGES_FILE).read_text())
    for image in series_images.values():
        raw = image.removesuffix(".mhd") + ".raw"
        assert service[image] == (operator_out / image).read_bytes()
        assert service[raw] == (operator_out / raw).read_bytes()
    (selected,) = flow.observer.of(JobSelected, job.job_id)
    assert selected.routing_key == "job.selected.series-selection-pipeline"
    assert flow.observer.of(ExportRequested) == []


def test_services_wait_for_an_unreachable_store_and_still_stop(settings: ServiceSettings) -> None:
    down = settings.model_copy(update={"s3_endpoint": "127.0.0.1:9"})
    services: list[ParserService | SelectorService] = [
        ParserService(down).start(),
        SelectorService(down).start(),
    ]
    time.sleep(0.5)
    assert all(s.running for s in services)  # retrying, not crashed
    for service in services:
        service.stop(10.0)  # raises if the service does not stop
    assert all(not s.running and s.error is None for s in services)


def test_a_long_parse_keeps_the_broker_connection_alive(settings: ServiceSettings) -> None:
    """Without heartbeats serviced, RabbitMQ drops the connection and redelivers the job."""
    broker = Broker(settings, "test")
    params = pika.URLParameters(settings.amqp_url.get_secret_value())
    params.heartbeat = 1

    def alive_after(work: Callable[[], None]) -> bool:
        broker._connection = pika.BlockingConnection(params)
        work()
        try:
            broker._connection.channel().close()
            return True
        except pika.exceptions.AMQPError:
            return False
        finally:
            broker.close()

    assert alive_after(lambda: broker.run_alongside(lambda: time.sleep(4)))
    assert not alive_after(lambda: time.sleep(4))  # the premise: a silent connection dies


def test_work_alongside_the_connection_returns_as_soon_as_it_ends(
    settings: ServiceSettings,
) -> None:
    """The worker wakes the connection's thread: a job's result is not held until the
    next poll of the connection (up to SERVICE_POLL_SECONDS later)."""

    def work() -> int:
        time.sleep(0.02)
        return 7

    with Broker(settings, "test") as broker:
        broker.connect(attempts=3)
        took = []
        for _ in range(5):
            started = time.perf_counter()
            assert broker.run_alongside(work) == 7
            took.append(time.perf_counter() - started)
    assert SERVICE_POLL_SECONDS >= 0.5
    assert sorted(took)[2] < 0.2, took


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    assert not [t for t in threading.enumerate() if t.name in {"parser", "selector"}]
