"""Each service's ``GET /metrics`` after a real study: the receiver, parser, selector and
exporter run as separate processes (real RabbitMQ vhost, real SeaweedFS, dcmtk storescp as
the destination), dcmtk storescu sends a study, and each scrape over HTTP shows the right
counts and no patient data or UID.
"""

from __future__ import annotations

import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.broker import Broker, Delivery
from shared.errors import PermanentError, TransientError
from shared.events import Envelope, new_id
from shared.metrics import Metrics
from shared.samples import write_brain_mr_study
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import dcmtk, free_port, wait_for_port
from .processes import (
    ServiceProcess,
    StoreSCP,
    service_environment,
    wait_until,
    write_brain_deployment,
)
from .test_operations import job_event

SERVICES = ("receiver", "parser", "selector", "exporter")
T1C = "T1c SE AX post-contrast"


@dataclass
class Stack:
    store: ObjectStore
    processes: dict[str, ServiceProcess]
    metrics_ports: dict[str, int]
    receiver_port: int
    study: Path
    destination: StoreSCP

    def scrape(self, service: str) -> str:
        url = f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode("utf-8"))

    def value(self, service: str, sample: str, **labels: str) -> float:
        """A sample's value in the service's scrape (0 if absent)."""
        for family in text_string_to_metric_families(self.scrape(service)):
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def storescu(self, calling: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                dcmtk("storescu"),
                "--aetitle",
                calling,
                "--call",
                "SERIESFLOW",
                "--scan-directories",
                "--recurse",
                "--required",
                "127.0.0.1",
                str(self.receiver_port),
                str(self.study),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log()[-3000:]}" for n, p in self.processes.items())


@pytest.fixture
def stack(settings: ServiceSettings, tmp_path: Path) -> Iterator[Stack]:
    study = tmp_path / "study"
    write_brain_mr_study(study, seed=21)
    receiver_port = free_port()
    destination = StoreSCP(tmp_path / "pacs").start()
    config, pipelines = write_brain_deployment(tmp_path, receiver_port, destination)
    env = service_environment(settings, config, pipelines)
    ports = {name: free_port() for name in SERVICES}
    processes = {
        name: ServiceProcess(
            name, {**env, "SERIESFLOW_METRICS_PORT": str(ports[name])}, tmp_path
        ).start()
        for name in SERVICES
    }
    store = ObjectStore(settings)
    try:
        wait_for_port(receiver_port, timeout=30)
        for port in ports.values():
            wait_for_port(port, timeout=30)
        yield Stack(store, processes, ports, receiver_port, study, destination)
    finally:
        for process in processes.values():
            process.stop()
        destination.stop()


def test_each_service_counts_a_study_and_shows_no_patient_data_or_uid(stack: Stack) -> None:
    files = [p for p in stack.study.rglob("*") if p.is_file()]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    secrets = {str(ds.SOPInstanceUID) for ds in headers}
    secrets |= {str(ds.SeriesInstanceUID) for ds in headers}
    secrets |= {str(ds.StudyInstanceUID) for ds in headers}
    secrets |= {str(ds.PatientName) for ds in headers} | {str(ds.PatientID) for ds in headers}
    secrets |= {"STRANGER", "MODALITY"}  # the calling peers' AE titles

    # An unknown calling AE title is refused: counted by reason, never by the peer's title.
    refused = stack.storescu("STRANGER")
    assert refused.returncode != 0
    assert stack.value(
        "receiver",
        "seriesflow_associations_refused_total",
        reason="calling AE title not recognised",
    ) == pytest.approx(1)

    sent = stack.storescu("MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_until(
        lambda: stack.value("exporter", "seriesflow_jobs_total", stage="exporter") >= 1,
        120,
        "the exporter to count the job",
    )

    r = "receiver"
    assert stack.value(r, "seriesflow_instances_received_total") == len(files), stack.logs()
    assert stack.value(r, "seriesflow_cstore_responses_total", status="0x0000") == len(files)
    stored = [i for i in stack.store.list_info("incoming/") if i.key.endswith(".dcm")]
    assert len(stored) == len(files)
    assert stack.value(r, "seriesflow_received_bytes_total") == sum(i.size for i in stored)
    assert stack.value(r, "seriesflow_associations_accepted_total") == 1
    assert stack.value(r, "seriesflow_associations_open") == 0
    assert stack.value(r, "seriesflow_events_published_total", type="job.received") == 1

    t1c = sum(str(ds.get("SeriesDescription", "")) == T1C for ds in headers)
    assert t1c > 0
    assert len(stack.destination.files()) == t1c
    x = "exporter"
    assert stack.value(x, "seriesflow_export_files_total", status="sent") == t1c
    assert stack.value(x, "seriesflow_export_files_total", status="failed") == 0

    stages = (("parser", "job.parsed"), ("selector", "job.selected"), (x, "export.completed"))
    for stage, published in stages:
        assert stack.value(stage, "seriesflow_jobs_total", stage=stage, outcome="completed") == 1
        assert stack.value(stage, "seriesflow_jobs_total", stage=stage, outcome="failed") == 0
        assert stack.value(stage, "seriesflow_events_published_total", type=published) == 1
        assert stack.value(stage, "seriesflow_stage_latency_seconds_count", stage=stage) == 1
        assert stack.value(stage, "seriesflow_stage_latency_seconds_sum", stage=stage) > 0
        assert stack.value(stage, "seriesflow_dead_letters_total") == 0

    for service in SERVICES:
        text = stack.scrape(service)
        leaked = sorted(s for s in secrets if s and s in text)
        assert not leaked, f"{service} /metrics shows {leaked}"


def test_the_broker_counts_a_retry_and_a_dead_letter(settings: ServiceSettings) -> None:
    metrics = Metrics("parser")
    consumer = Broker(settings, "parser", metrics)
    consumer.connect(attempts=3)
    consumer.declare_service_queue("parser", ["job.received.#"])
    publisher = Broker(settings, "test")
    publisher.connect(attempts=3)
    answers: list[Exception] = [TransientError("busy"), PermanentError("not a study")]

    def handler(envelope: Envelope, delivery: Delivery) -> None:
        raise answers.pop(0)

    stop = threading.Event()
    thread = threading.Thread(
        target=consumer.consume, args=("parser", ["job.received.#"], handler, stop), daemon=True
    )
    thread.start()
    try:
        job = new_id()
        publisher.publish(job_event(job))
        wait_until(lambda: not answers, 30, "both deliveries")
        wait_until(
            lambda: b"seriesflow_dead_letters_total" in metrics.exposition(), 30, "the dead letter"
        )
    finally:
        stop.set()
        thread.join(15)
        consumer.close()
        publisher.close()
    text = metrics.exposition().decode()
    assert 'seriesflow_retries_total{service="parser"} 1.0' in text
    assert 'seriesflow_dead_letters_total{by="seriesflow",service="parser"} 1.0' in text
    assert job not in text
    assert 'type="job.received"' in publisher.metrics.exposition().decode()
