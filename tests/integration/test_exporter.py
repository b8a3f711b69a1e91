"""The exporter against real destinations (dcmtk ``storescp`` and Orthanc), real RabbitMQ and
a real S3 server: every file arrives as stored, a retry sends only what was not confirmed,
an unreachable or unknown destination ends in a dead letter with its reason, and a killed
exporter finishes the export after a restart without duplicating anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from services.exporter.export_state import (
    ExportState,
    FileRecord,
    StateRecorder,
    load_state,
    save_state,
)
from services.exporter.main import ExporterService
from services.exporter.meta import FileMeta, parse_file_meta
from services.exporter.settings import ExporterSettings, exporter_settings
from shared import keys
from shared.broker import Broker
from shared.events import EXCHANGE, Envelope, ExportCompleted, ExportRequested, event_id, new_id
from shared.jobstore import JobStore
from shared.manifest import InstanceRef, JobManifest
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import dcmtk, dcmtk_available, free_port, wait_for_port

pytestmark = pytest.mark.skipif(
    not dcmtk_available("storescp"), reason="dcmtk's storescp is not installed"
)
ORTHANC = "/usr/sbin/Orthanc"
REPO = Path(__file__).resolve().parents[2]


# -- destinations -------------------------------------------------------------------------


@dataclass
class Storescp:
    port: int
    directory: Path

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> received file."""
        found = {}
        for path in self.directory.iterdir():
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            found[str(dataset.SOPInstanceUID)] = path
        return found


@contextmanager
def storescp(tmp: Path, ae_title: str = "DEST", *options: str) -> Iterator[Storescp]:
    """dcmtk's storescp writing what it receives, bit for bit (``+B``), into a folder."""
    directory = tmp / f"storescp-{ae_title}"
    directory.mkdir()
    port = free_port()
    log = (tmp / f"storescp-{ae_title}.log").open("wb")
    process = subprocess.Popen(
        [dcmtk("storescp"), "+B", "-aet", ae_title, "-od", str(directory), *options, str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_for_port(port, 10)
        yield Storescp(port, directory)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def count(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def sop_instance_uids(self) -> list[str]:
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self._get("/instances?expand")]


@contextmanager
def orthanc(tmp: Path, ae_title: str = "ORTHANC") -> Iterator[Orthanc]:
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc is not installed")
    home = tmp / "orthanc"
    home.mkdir()
    server = Orthanc(free_port(), free_port())
    config = home / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "seriesflow-test",
                "DicomAet": ae_title,
                "DicomPort": server.dicom_port,
                "HttpPort": server.http_port,
                "StorageDirectory": str(home / "storage"),
                "IndexDirectory": str(home / "index"),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": [],
            }
        )
    )
    log = (home / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=home
    )
    try:
        wait_for_port(server.http_port, 20)
        wait_for_port(server.dicom_port, 20)
        yield server
    finally:
        process.terminate()
        process.wait(20)
        log.close()


# -- the service side ---------------------------------------------------------------------


def exporter_config(
    settings: ServiceSettings, tmp: Path, destinations: dict[str, tuple[int, str]], **extra: Any
) -> ExporterSettings:
    """Settings whose DICOM configuration lists ``destinations`` (name: (port, AE title))."""
    config = tmp / "seriesflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dicom": {
                    "scu": {
                        "ae-title": "SERIESFLOW",
                        "max-associations": 2,
                        "destinations": [
                            {"name": name, "host-ip": "127.0.0.1", "port": port, "ae-title": ae}
                            for name, (port, ae) in destinations.items()
                        ],
                    }
                }
            }
        )
    )
    return exporter_settings(settings.model_copy(update={"config": config})).model_copy(
        update={"exporter_connect_timeout": 2.0, **extra}
    )


def upload_ct(store: ObjectStore, tmp: Path, slices: int, size: int = 32) -> dict[str, Path]:
    """A CT series in the store as the receiver leaves it: object key -> source file."""
    store.ensure_bucket()
    association = new_id()
    uploaded = {}
    for path in sorted(write_ct_series(tmp / "ct", slices=slices, size=size)):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        key = keys.incoming_instance(association, uid)
        store.put_file(key, path)
        uploaded[key] = path
    return uploaded


def write_manifest(store: ObjectStore, sources: dict[str, Path]) -> str:
    """A job manifest for the uploaded files, as the receiver writes it; returns the job ID."""
    job = new_id()
    instances = []
    for key, path in sources.items():
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        instances.append(InstanceRef.from_dataset(key, dataset))
    manifest = JobManifest(
        job_id=job,
        pipeline="ct",
        called_ae_title="SERIESFLOW",
        calling_ae_title="MODALITY",
        associations=[new_id()],
        instances=instances,
    )
    store.put_bytes(keys.manifest(job), manifest.model_dump_json().encode())
    return job


def export_request(destination: str, instance_keys: list[str], job: str | None = None) -> Envelope:
    job, export = job or new_id(), new_id()
    body = ExportRequested(
        export_id=export,
        destination=destination,
        pipeline="ct",
        selection="all",
        instance_keys=instance_keys,
    )
    return Envelope.wrap(body, job_id=job, producer="test", event_id=event_id(job, export))


class Observer:
    """A test queue on ``export.completed``, and the exporter's dead letters."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.broker = Broker(settings, "test")
        self.broker.connect(attempts=3)
        self.broker.declare_service_queue("exporter", ["export.requested.#"])
        channel = self.broker.channel
        channel.queue_declare("test.completed", durable=True)
        channel.queue_bind("test.completed", EXCHANGE, routing_key="export.completed")

    def publish(self, envelope: Envelope) -> None:
        self.broker.publish(envelope)

    def completed(self, timeout: float = 90.0, count: int = 1) -> list[Envelope]:
        found: list[Envelope] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            method, _, body = self.broker.channel.basic_get("test.completed", auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            found.append(Envelope.from_bytes(body))
        assert len(found) == count, f"{len(found)} export.completed events, expected {count}"
        return found

    def dead_letter(self, timeout: float = 90.0) -> tuple[Envelope, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.broker.channel.basic_get(
                "seriesflow.exporter.dead", auto_ack=True
            )
            if method is not None:
                return Envelope.from_bytes(body), dict(props.headers or {})
            time.sleep(0.05)
        raise AssertionError("no dead letter")

    def close(self) -> None:
        self.broker.close()


@pytest.fixture
def observer(settings: ServiceSettings) -> Iterator[Observer]:
    watcher = Observer(settings)
    try:
        yield watcher
    finally:
        watcher.close()


def body_of(envelope: Envelope) -> ExportCompleted:
    assert isinstance(envelope.body, ExportCompleted)
    return envelope.body


def dataset_bytes(data: bytes) -> bytes:
    """The encoded data set of a Part 10 file, after its File Meta Information."""
    meta = parse_file_meta(data, complete=True)
    assert isinstance(meta, FileMeta)
    return data[meta.dataset_offset :]


# -- tests --------------------------------------------------------------------------------


def test_every_file_arrives_as_stored_at_storescp_and_orthanc(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=10)
    with storescp(tmp_path) as scp, orthanc(tmp_path) as pacs:
        config = exporter_config(
            settings,
            tmp_path,
            {"scp": (scp.port, "DEST"), "pacs": (pacs.dicom_port, "ORTHANC")},
        )
        to_scp = export_request("scp", list(sources))
        to_pacs = export_request("pacs", list(sources))
        with ExporterService(config):
            observer.publish(to_scp)
            observer.publish(to_pacs)
            events = {body_of(e).destination: e for e in observer.completed(count=2)}
        received = scp.received()
        pacs_uids = pacs.sop_instance_uids()

    source_uids = {}
    for path in sources.values():
        source_uids[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    assert set(received) == set(source_uids)
    for uid, path in source_uids.items():
        # storescp +B writes the data set exactly as it came off the wire
        assert dataset_bytes(received[uid].read_bytes()) == dataset_bytes(path.read_bytes())
        assert pydicom.dcmread(received[uid]).PixelData == pydicom.dcmread(path).PixelData
    assert sorted(pacs_uids) == sorted(source_uids)

    for name, request in (("scp", to_scp), ("pacs", to_pacs)):
        completed = body_of(events[name])
        assert completed.status == "succeeded"
        assert completed.attempt == 1
        assert [f.key for f in completed.files] == list(sources)
        assert {f.status for f in completed.files} == {"sent"}
        assert events[name].job_id == request.job_id
        export_id = request.body.export_id  # type: ignore[union-attr]
        assert events[name].event_id == event_id(export_id, name, "completed", "succeeded")
        state = load_state(JobStore(store), export_id).destinations[name]
        assert state.confirmed() == set(sources)
        assert state.attempts == 1


def test_parallel_associations_send_every_file_once_to_a_forking_and_a_serial_scp(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    """Three associations per export: Orthanc serves them at once; storescp without
    --fork serves one at a time (the others are answered late or time out), and the export
    still succeeds over the associations it got."""
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=30)
    with storescp(tmp_path) as scp, orthanc(tmp_path) as pacs:
        config = exporter_config(
            settings,
            tmp_path,
            {"scp": (scp.port, "DEST"), "pacs": (pacs.dicom_port, "ORTHANC")},
            exporter_associations=3,
            exporter_acse_timeout=3.0,
            exporter_file_retries=0,
        )
        requests = {name: export_request(name, list(sources)) for name in ("scp", "pacs")}
        with ExporterService(config):
            for request in requests.values():
                observer.publish(request)
            events = {body_of(e).destination: e for e in observer.completed(count=2)}
        received = scp.received()
        pacs_uids = pacs.sop_instance_uids()

    source_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources.values()
    }
    assert set(received) == source_uids
    assert sorted(pacs_uids) == sorted(source_uids)
    for name, request in requests.items():
        completed = body_of(events[name])
        assert (completed.status, completed.attempt) == ("succeeded", 1)
        assert [f.key for f in completed.files] == list(sources)
        assert {f.status for f in completed.files} == {"sent"}
        state = load_state(JobStore(store), request.body.export_id).destinations[name]  # type: ignore[union-attr]
        assert state.confirmed() == set(sources)


def test_a_retry_sends_only_what_was_not_confirmed(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=10)
    all_keys = list(sources)
    confirmed, rest = all_keys[:5], all_keys[5:]
    request = export_request("scp", all_keys)
    export_id = request.body.export_id  # type: ignore[union-attr]
    state = ExportState(export_id=export_id)
    earlier = state.for_destination("scp")
    earlier.attempts = 1
    for key in confirmed:
        earlier.files[key] = FileRecord(status="sent", attempt=1)
    for key in rest:
        earlier.files[key] = FileRecord(status="failed", detail="no response", attempt=1)
    save_state(JobStore(store), state)

    with storescp(tmp_path) as scp:
        config = exporter_config(
            settings, tmp_path, {"scp": (scp.port, "DEST")}, exporter_state_lag=2
        )
        with ExporterService(config):
            observer.publish(request)
            (event,) = observer.completed()
        received = scp.received()

    rest_uids = {
        str(pydicom.dcmread(sources[k], stop_before_pixels=True).SOPInstanceUID) for k in rest
    }
    assert set(received) == rest_uids
    completed = body_of(event)
    assert completed.status == "succeeded"
    assert completed.attempt == 2
    assert {f.key: f.status for f in completed.files} == dict.fromkeys(all_keys, "sent")
    after = load_state(JobStore(store), export_id).destinations["scp"]
    assert after.confirmed() == set(all_keys)
    assert {after.files[k].attempt for k in confirmed} == {1}
    assert {after.files[k].attempt for k in rest} == {2}


def test_an_unreachable_destination_is_retried_then_dead_lettered_with_the_reason(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=4)
    nothing_listens = free_port()
    config = exporter_config(
        settings, tmp_path, {"down": (nothing_listens, "DOWN")}, exporter_file_retries=1
    )
    request = export_request("down", list(sources))
    with ExporterService(config):
        observer.publish(request)
        dead, headers = observer.dead_letter()
        (event,) = observer.completed()

    assert dead.event_id == request.event_id
    reason = headers["x-seriesflow-reason"]
    assert "4 of 4 files were not confirmed by destination down" in reason
    assert f"127.0.0.1:{nothing_listens}" in reason
    assert "gave up after 4 deliveries" in reason
    assert headers["x-seriesflow-error"] == "TransientError"
    completed = body_of(event)
    assert completed.status == "failed"
    assert completed.attempt == settings.delivery_limit
    assert {f.status for f in completed.files} == {"failed"}
    state = load_state(JobStore(store), request.body.export_id).destinations["down"]  # type: ignore[union-attr]
    assert state.attempts == settings.delivery_limit  # one attempt per delivery
    assert state.confirmed() == set()


def test_an_unknown_destination_is_dead_lettered_at_once(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    config = exporter_config(settings, tmp_path, {"known": (free_port(), "KNOWN")})
    request = export_request("elsewhere", ["incoming/x/1.2.3.dcm"])
    with ExporterService(config):
        observer.publish(request)
        dead, headers = observer.dead_letter()
        (event,) = observer.completed()

    assert dead.event_id == request.event_id
    assert headers["x-seriesflow-reason"] == "destination elsewhere is not configured"
    assert headers["x-seriesflow-error"] == "PermanentError"
    assert "x-delivery-count" not in headers or headers["x-delivery-count"] == 0
    completed = body_of(event)
    assert (completed.status, completed.attempt) == ("failed", 1)
    assert not store.exists(keys.export_state(request.body.export_id))  # type: ignore[union-attr]


def test_a_killed_exporter_finishes_the_export_after_a_restart_without_duplicates(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=60, size=64)
    source_uids = sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources.values()
    )
    job = write_manifest(store, sources)  # file headers come from the manifest
    request = export_request("pacs", list(sources), job)
    export_id = request.body.export_id  # type: ignore[union-attr]
    with orthanc(tmp_path) as pacs:
        config = exporter_config(settings, tmp_path, {"pacs": (pacs.dicom_port, "ORTHANC")})
        env = {
            **os.environ,
            "SERIESFLOW_CONFIG": str(config.config),
            "SERIESFLOW_AMQP_URL": config.amqp_url.get_secret_value(),
            "SERIESFLOW_S3_ENDPOINT": config.s3_endpoint,
            "SERIESFLOW_S3_ACCESS_KEY": config.s3_access_key.get_secret_value(),
            "SERIESFLOW_S3_SECRET_KEY": config.s3_secret_key.get_secret_value(),
            "SERIESFLOW_S3_BUCKET": config.s3_bucket,
            "SERIESFLOW_DELIVERY_LIMIT": str(config.delivery_limit),
            "SERIESFLOW_RETRY_BACKOFF_SECONDS": "0.05",
            "SERIESFLOW_EXPORTER_STATE_LAG": "0",
            "SERIESFLOW_EXPORTER_ASSOCIATIONS": "1",  # one file on the wire at a time
            "SERIESFLOW_LOG_LEVEL": "INFO",
        }
        command = [sys.executable, "-m", "seriesflow", "exporter"]
        first_log = (tmp_path / "exporter-1.log").open("wb")
        first = subprocess.Popen(command, env=env, cwd=REPO, stderr=first_log)
        try:
            observer.publish(request)
            deadline = time.monotonic() + 60
            while pacs.count() < 10 and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
            first_log.close()
        time.sleep(0.5)  # let Orthanc finish storing the file that was on the wire
        arrived_before_restart = pacs.count()
        recorded = load_state(JobStore(store), export_id).destinations["pacs"].confirmed()
        first_log_text = (tmp_path / "exporter-1.log").read_text()[-3000:]
        assert 10 <= arrived_before_restart < len(sources), (
            f"the kill did not land mid-export; exporter log: {first_log_text}"
        )
        # only the file on the wire when the process died may be stored but not recorded
        assert len(recorded) <= arrived_before_restart <= len(recorded) + 1

        second_log_path = tmp_path / "exporter-2.log"
        with second_log_path.open("wb") as second_log:
            second = subprocess.Popen(command, env=env, cwd=REPO, stderr=second_log)
            try:
                (event,) = observer.completed(timeout=180)  # Orthanc syncs every instance
            except AssertionError as exc:
                log = second_log_path.read_text()[-3000:]
                raise AssertionError(f"{exc}; exporter log: {log}") from exc
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(30)
        final_count = pacs.count()
        final_uids = sorted(pacs.sop_instance_uids())

    assert final_count == len(sources)
    assert final_uids == source_uids
    completed = body_of(event)
    assert completed.status == "succeeded"
    assert completed.attempt == 2
    assert {f.status for f in completed.files} == {"sent"}
    state = load_state(JobStore(store), export_id).destinations["pacs"]
    assert state.confirmed() == set(sources)
    logged = [json.loads(line) for line in second_log_path.read_text().splitlines() if line]
    done = [entry for entry in logged if entry.get("message") == "export completed"]
    assert [entry["sent_now"] for entry in done] == [len(sources) - len(recorded)]


def restart(command: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` again once the port is free (a dead server's children may hold it)."""
    deadline = time.monotonic() + 10
    while True:
        with log.open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            process.wait(0.2)
        except subprocess.TimeoutExpired:
            return process  # still running: it is listening
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot restart {command[0]}: {log.read_text()[-500:]}")


def test_a_dropped_association_is_reopened_and_the_file_sent_again(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=20)
    directory = tmp_path / "received"
    directory.mkdir()
    port = free_port()
    log = tmp_path / "storescp.log"
    command = [dcmtk("storescp"), "+B", "-aet", "DEST", "-od", str(directory), str(port)]
    slow = ["-xcr", "sleep 0.05", "-xs"]  # answer each C-STORE 50 ms late
    with log.open("ab") as out:
        first = subprocess.Popen(
            [*command[:-1], *slow, str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for_port(port, 10)
        config = exporter_config(
            settings, tmp_path, {"scp": (port, "DEST")}, exporter_file_retries=6
        )
        with ExporterService(config):
            observer.publish(export_request("scp", list(sources)))
            deadline = time.monotonic() + 30
            while len(list(directory.iterdir())) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            first.send_signal(signal.SIGKILL)  # the destination dies mid-export
            first.wait(10)
            arrived_from_first = len(list(directory.iterdir()))
            second = restart(command, port, log)
            (event,) = observer.completed()
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)

    assert 5 <= arrived_from_first < len(sources)
    received = Storescp(port, directory).received()
    source_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources.values()
    }
    assert set(received) == source_uids
    completed = body_of(event)
    assert (completed.status, completed.attempt) == ("succeeded", 1)  # within the attempt
    assert {f.status for f in completed.files} == {"sent"}


def test_unsendable_objects_are_skipped_and_syntaxes_fall_back_within_little_endian(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    sources = upload_ct(store, tmp_path, slices=10)
    missing = keys.incoming_instance(new_id(), "1.2.3.4")
    not_dicom = keys.incoming_instance(new_id(), "1.2.3.5")
    store.put_bytes(not_dicom, b"this is not DICOM" * 20)
    instance_keys = [*list(sources)[:5], missing, *list(sources)[5:], not_dicom]
    # +xi: the destination accepts Implicit VR Little Endian only; the files are Explicit
    with storescp(tmp_path, "DEST", "+xi") as scp:
        config = exporter_config(settings, tmp_path, {"scp": (scp.port, "DEST")})
        with ExporterService(config):
            observer.publish(export_request("scp", instance_keys))
            (event,) = observer.completed()
        received = scp.received()

    assert len(received) == len(sources)
    for path in sources.values():
        source = pydicom.dcmread(path)
        arrived = pydicom.dcmread(received[str(source.SOPInstanceUID)])
        assert arrived.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        assert arrived.PixelData == source.PixelData
    completed = body_of(event)
    assert completed.status == "succeeded"  # 2 of 12 not sent: not more than half
    statuses = {f.key: (f.status, f.detail) for f in completed.files}
    assert [f.key for f in completed.files] == instance_keys
    assert statuses[missing] == ("skipped", "not in the object store")
    assert statuses[not_dicom] == ("skipped", "no DICM prefix: not a DICOM Part 10 file")
    assert {statuses[k][0] for k in sources} == {"sent"}


def test_files_the_destination_refuses_fail_at_once_without_retries(
    settings: ServiceSettings, observer: Observer, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    private_class = pydicom.uid.UID("1.2.826.0.1.3680043.8.498.1.77")
    instance_keys = []
    for path in sorted(write_ct_series(tmp_path / "ct", slices=3, size=16)):
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = private_class
        dataset.file_meta.MediaStorageSOPClassUID = private_class
        dataset.save_as(path, enforce_file_format=True)
        key = keys.incoming_instance(new_id(), str(dataset.SOPInstanceUID))
        store.put_file(key, path)
        instance_keys.append(key)
    with storescp(tmp_path) as scp:  # not promiscuous: unknown SOP classes are refused
        config = exporter_config(settings, tmp_path, {"scp": (scp.port, "DEST")})
        request = export_request("scp", instance_keys)
        with ExporterService(config):
            observer.publish(request)
            dead, headers = observer.dead_letter()
            (event,) = observer.completed()
        received = scp.received()

    assert received == {}
    assert dead.event_id == request.event_id
    assert headers["x-seriesflow-error"] == "PermanentError"
    assert "accepted none of the proposed SOP classes" in headers["x-seriesflow-reason"]
    completed = body_of(event)
    assert (completed.status, completed.attempt) == ("failed", 1)
    state = load_state(JobStore(store), request.body.export_id).destinations["scp"]  # type: ignore[union-attr]
    assert state.attempts == 1


@pytest.mark.parametrize("lag", [0, 3])
def test_the_stored_state_never_lags_more_than_the_setting(
    settings: ServiceSettings, lag: int
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    reader = JobStore(ObjectStore(settings))
    export_id = new_id()
    with StateRecorder(JobStore(store), ExportState(export_id=export_id), "d", lag) as recorder:
        assert recorder.start_attempt() == 1
        for n in range(40):
            recorder.record(f"incoming/x/1.2.{n}.dcm", "sent")
            stored = load_state(reader, export_id).destinations["d"]
            assert n + 1 - lag <= len(stored.confirmed()) <= n + 1
        recorder.flush()
        assert len(load_state(reader, export_id).destinations["d"].confirmed()) == 40
    assert load_state(reader, export_id).destinations["d"].attempts == 1
