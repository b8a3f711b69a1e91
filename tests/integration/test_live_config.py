"""Live reconfiguration: AE titles, sources, destinations and pipelines changed through the
REST API apply to running services without a restart (real receiver, parser, selector and
exporter, real API app, real store, RabbitMQ, dcmtk), one bad stored object never stops the
rest, and an AE title whose pipeline is gone refuses C-STORE."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE

from services.config_api.app import create_app
from services.exporter.main import ExporterService
from services.parser.main import ParserService
from services.receiver.main import Receiver
from services.selector.main import SelectorService
from shared import keys
from shared.broker import Broker
from shared.config import SeriesflowConfig, parse_config
from shared.configstore import LiveConfig
from shared.dicom.metadata import SELECTED_IMAGES_FILE
from shared.errors import InvalidInputError
from shared.events import Envelope, ExportRequested, event_id, new_id
from shared.jobstore import JobStore
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from tests.conftest import RaisingJsonHandler

from .infra import dcmtk, free_port
from .processes import StoreSCP, wait_until

BASE = "http://localhost:5000"
APPLY_WITHIN_SECONDS = 2.0  # issue 4: a new AE title answers C-ECHO within 2 s of the POST


def echo(port: int, called: str, calling: str = "MODALITY") -> bool:
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


def seconds_until(condition: bool, check: Callable[[], bool], limit: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if check() == condition:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not {'reached' if condition else 'gone'} after {limit} s")


@pytest.fixture
def static_config() -> SeriesflowConfig:
    return parse_config(
        {
            "dicom": {
                "scp": {
                    "host": "127.0.0.1",
                    "port": free_port(),
                    "ae-titles": [{"ae-title": "STATIC", "pipeline": "p"}],
                    "reject-unknown-sources": True,
                    "sources": [{"host-ip": "127.0.0.1", "ae-title": "MODALITY"}],
                }
            }
        }
    )


@pytest.fixture
def configured(settings: ServiceSettings, tmp_path: Path) -> ServiceSettings:
    """The test's settings with a pipelines folder defining the file's pipeline ``p``."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "p.yaml").write_text("name: p\n")
    return settings.model_copy(update={"pipelines": folder})


@pytest.fixture
def running(
    configured: ServiceSettings, static_config: SeriesflowConfig
) -> Iterator[tuple[Receiver, TestClient]]:
    store = ObjectStore(configured)
    store.ensure_bucket()
    receiver = Receiver(configured, static_config)
    receiver.start()
    client = TestClient(
        create_app(configured, store, None, static_config), base_url="http://localhost:5000"
    )
    try:
        yield receiver, client
    finally:
        receiver.stop()


def test_a_new_ae_title_answers_at_once_and_a_deleted_one_is_refused(
    running: tuple[Receiver, TestClient],
) -> None:
    receiver, client = running
    assert echo(receiver.port, "STATIC")
    assert not echo(receiver.port, "LIVE")
    response = client.post("/api/v1/ae-titles", json={"aeTitle": "LIVE", "pipeline": "p"})
    assert response.status_code == 201, response.text
    assert seconds_until(True, lambda: echo(receiver.port, "LIVE")) <= APPLY_WITHIN_SECONDS
    assert client.delete("/api/v1/ae-titles/LIVE").status_code == 204
    assert seconds_until(False, lambda: echo(receiver.port, "LIVE")) <= APPLY_WITHIN_SECONDS
    assert echo(receiver.port, "STATIC")  # the file's AE title is untouched


def test_a_new_source_is_allowed_without_a_restart(running: tuple[Receiver, TestClient]) -> None:
    receiver, client = running
    assert not echo(receiver.port, "STATIC", calling="NEWMODALITY")
    response = client.post(
        "/api/v1/sources", json={"aeTitle": "NEWMODALITY", "hostIp": "127.0.0.1"}
    )
    assert response.status_code == 201, response.text
    elapsed = seconds_until(True, lambda: echo(receiver.port, "STATIC", calling="NEWMODALITY"))
    assert elapsed <= APPLY_WITHIN_SECONDS


def test_a_new_destination_is_used_by_the_next_export(
    settings: ServiceSettings, static_config: SeriesflowConfig, tmp_path: Path
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    files = write_ct_series(tmp_path / "ct", slices=3, size=16)
    association = new_id()
    instance_keys = []
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        key = keys.incoming_instance(association, uid)
        store.put_bytes(key, path.read_bytes())
        instance_keys.append(key)
    destination = StoreSCP(tmp_path / "pacs", "NEWPACS").start()
    exporter = ExporterService(settings).start()
    client = TestClient(create_app(settings, store, None, static_config), base_url=BASE)
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    try:
        response = client.post(
            "/api/v1/destinations",
            json={
                "name": "newpacs",
                "aeTitle": "NEWPACS",
                "hostIp": "127.0.0.1",
                "port": destination.port,
            },
        )
        assert response.status_code == 201, response.text
        job = new_id()
        body = ExportRequested(
            export_id=event_id(job, "export", "T1C", "newpacs"),
            destination="newpacs",
            pipeline="p",
            selection="T1C",
            instance_keys=instance_keys,
        )
        broker.publish(Envelope.wrap(body, job_id=job, producer="test", event_id=body.export_id))
        wait_until(lambda: len(destination.files()) == len(files), 60, "the export")
        assert broker.stats("exporter").dead_letters == 0
    finally:
        broker.close()
        exporter.stop()
        destination.stop()


def c_store_status(port: int, called: str, path: Path) -> int:
    """The status of one C-STORE of ``path`` to ``called`` (pynetdicom as the modality)."""
    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset)
        return int(status.Status)
    finally:
        assoc.release()


def storescu(port: int, called: str, folder: Path) -> None:
    result = subprocess.run(
        [
            *(dcmtk("storescu"), "-aet", "MODALITY", "-aec", called, "+sd", "+r", "-R"),
            *("127.0.0.1", str(port), str(folder)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def next_selection(store: ObjectStore, pipeline: str, seen: set[str]) -> dict[str, Any]:
    """The selected-images.json of the next job of ``pipeline`` (one not in ``seen``)."""
    jobs = JobStore(store)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for job in jobs.list_jobs():
            if job.job_id not in seen and job.pipeline == pipeline and job.stage == "selected":
                seen.add(job.job_id)
                selected: dict[str, Any] = json.loads(jobs.output(job.job_id, SELECTED_IMAGES_FILE))
                return selected
        time.sleep(0.2)
    raise AssertionError(f"no new selection of pipeline {pipeline} within 90 s")


@pytest.mark.log_level("INFO")
def test_a_pipeline_created_or_changed_through_the_api_is_used_by_the_next_study(
    running: tuple[Receiver, TestClient], configured: ServiceSettings, tmp_path: Path
) -> None:
    receiver, client = running
    store = ObjectStore(configured)
    pipeline = {
        "name": "fresh",
        "image-format": "nii",
        "rules": {"selections": [{"name": "FRESHCT", "conditions": {"Modality": "CT"}}]},
    }
    with ParserService(configured), SelectorService(configured):
        created = client.post("/api/v1/pipelines", json=pipeline)
        assert created.status_code == 201, created.text
        answer = client.post("/api/v1/ae-titles", json={"aeTitle": "FRESH", "pipeline": "fresh"})
        assert answer.status_code == 201, answer.text
        seconds_until(True, lambda: echo(receiver.port, "FRESH"))
        write_ct_series(tmp_path / "one", slices=4, size=16, seed=3)
        storescu(receiver.port, "FRESH", tmp_path / "one")
        seen: set[str] = set()
        first = next_selection(store, "fresh", seen)
        assert list(first) == ["FRESHCT"]
        assert all(name.endswith(".nii") for name in first["FRESHCT"].values())

        revision = created.json()["revision"]
        changed = {
            **pipeline,
            "image-format": "mhd",
            "rules": {"selections": [{"name": "CHANGED", "conditions": {"Modality": "CT"}}]},
        }
        updated = client.put(
            "/api/v1/pipelines/fresh", json=changed, headers={"If-Match": revision}
        )
        assert updated.status_code == 200, updated.text
        write_ct_series(tmp_path / "two", slices=4, size=16, seed=4)
        storescu(receiver.port, "FRESH", tmp_path / "two")
        second = next_selection(store, "fresh", seen)
        assert list(second) == ["CHANGED"]
        assert all(name.endswith(".mhd") for name in second["CHANGED"].values())


@pytest.mark.log_level("INFO")
def test_a_bad_stored_object_is_skipped_and_a_new_ae_title_still_answers(
    running: tuple[Receiver, TestClient],
    configured: ServiceSettings,
    seriesflow_logging: RaisingJsonHandler,
) -> None:
    receiver, client = running
    store = ObjectStore(configured)
    # Written behind the API's back: not JSON, a document without a spec, a spec that no
    # longer validates, and a pipeline whose rules do not parse.
    store.put_bytes(keys.config("ae-titles", "broken"), b"{not json")
    store.put_json(keys.config("sources", "nospec"), {"name": "nospec"})
    store.put_json(
        keys.config("ae-titles", "toolong"), {"name": "toolong", "spec": {"ae-title": "X" * 20}}
    )
    store.put_json(
        keys.config("pipelines", "badrules"),
        {"name": "badrules", "spec": {"name": "badrules", "rules": {"selections": "nope"}}},
    )
    response = client.post("/api/v1/ae-titles", json={"aeTitle": "LIVE", "pipeline": "p"})
    assert response.status_code == 201, response.text
    assert seconds_until(True, lambda: echo(receiver.port, "LIVE")) <= APPLY_WITHIN_SECONDS
    assert echo(receiver.port, "STATIC")
    skipped = [
        r for r in seriesflow_logging.records if r.getMessage().startswith("stored configuration")
    ]
    reasons = " ".join(str(getattr(r, "reason", "")) for r in skipped)
    assert "toolong" in reasons
    assert "badrules" in reasons
    assert "broken" in reasons


def test_an_ae_title_whose_pipeline_is_gone_refuses_c_store(
    running: tuple[Receiver, TestClient], configured: ServiceSettings, tmp_path: Path
) -> None:
    receiver, client = running
    store = ObjectStore(configured)
    assert client.post("/api/v1/pipelines", json={"name": "gone"}).status_code == 201
    answer = client.post("/api/v1/ae-titles", json={"aeTitle": "GONE", "pipeline": "gone"})
    assert answer.status_code == 201, answer.text
    (path, *_) = sorted(write_ct_series(tmp_path / "ct", slices=3, size=16))
    seconds_until(True, lambda: echo(receiver.port, "GONE"))
    assert c_store_status(receiver.port, "GONE", path) == 0x0000
    # The API keeps a pipeline in use ...
    refused = client.delete("/api/v1/pipelines/gone")
    assert refused.status_code == 409
    assert "GONE" in refused.json()["message"]
    # ... but a pipeline can still disappear (here: its stored document is damaged).
    store.put_bytes(keys.config("pipelines", "gone"), b"damaged")

    def store_refused() -> bool:
        return c_store_status(receiver.port, "GONE", path) == 0x0124  # not authorized

    seconds_until(True, store_refused)
    assert echo(receiver.port, "GONE")  # the AE title itself still answers


def test_the_receiver_refuses_to_start_when_an_ae_title_names_no_pipeline(
    configured: ServiceSettings, static_config: SeriesflowConfig
) -> None:
    scp = static_config.dicom.scp
    titles = (
        *scp.ae_titles,
        scp.ae_titles[0].model_copy(update={"ae_title": "X", "pipeline": "nope"}),
    )
    config = static_config.model_copy(
        update={
            "dicom": static_config.dicom.model_copy(
                update={"scp": scp.model_copy(update={"ae_titles": titles})}
            )
        }
    )
    receiver = Receiver(configured, config)
    with pytest.raises(InvalidInputError, match="AE title 'X' names pipeline 'nope'"):
        receiver.start()


def test_two_changes_within_one_second_are_both_seen(configured: ServiceSettings) -> None:
    """S3 modification times have one-second resolution: the live view compares ETags."""
    store = ObjectStore(configured)
    store.ensure_bucket()
    live = LiveConfig(store, SeriesflowConfig(), 0.0)
    key = keys.config("pipelines", "fast")
    for _ in range(20):
        store.put_json(key, {"name": "fast", "spec": {"name": "fast"}})
        first = store.stat(key).modified
        assert live.get("fast") is not None
        store.put_bytes(key, b"damaged")
        if store.stat(key).modified == first:
            break
        store.delete(key)
    else:
        pytest.skip("could not write twice within one second")
    assert live.get("fast") is None
