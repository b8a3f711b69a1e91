"""Live reconfiguration: AE titles and sources changed through the REST API apply to a
running receiver without a restart (real receiver, real API app, real store, dcmtk)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from services.config_api.app import create_app
from services.exporter.main import ExporterService
from services.receiver.main import Receiver
from shared import keys
from shared.broker import Broker
from shared.config import SeriesflowConfig, parse_config
from shared.events import Envelope, ExportRequested, event_id, new_id
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore

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
def running(
    settings: ServiceSettings, static_config: SeriesflowConfig
) -> Iterator[tuple[Receiver, TestClient]]:
    store = ObjectStore(settings)
    store.ensure_bucket()
    receiver = Receiver(settings, static_config)
    receiver.start()
    client = TestClient(
        create_app(settings, store, None, static_config), base_url="http://localhost:5000"
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
