"""A study pushed by a modality flows receiver -> parser -> selector -> exporter, each a
separate process, and the routed series reaches the destination exactly once, even when
the parser is killed mid-job.

Real parts only: RabbitMQ (own vhost), SeaweedFS (own bucket), dcmtk storescu as the
modality and dcmtk storescp as the destination.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from shared.broker import Broker
from shared.events import Envelope
from shared.operator.parser import run_parser_operator
from shared.samples import write_brain_mr_study, write_ct_series
from shared.selection import load_rules_file
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from shared.volumes.convert import ConversionOptions

from .infra import dcmtk, free_port, wait_for_port
from .processes import (
    RULES,
    ServiceProcess,
    StoreSCP,
    service_environment,
    wait_until,
    write_brain_deployment,
)

SERVICES = ("receiver", "parser", "selector", "exporter")


@dataclass
class Deployment:
    settings: ServiceSettings
    store: ObjectStore
    broker: Broker
    processes: dict[str, ServiceProcess]
    destination: StoreSCP
    receiver_port: int
    study: Path
    t1c_sop_uids: set[str]
    workdir: Path

    def push_study(self) -> None:
        result = subprocess.run(
            [
                dcmtk("storescu"),
                "--aetitle",
                "MODALITY",
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
        assert result.returncode == 0, result.stdout + result.stderr

    def selected_images(self) -> list[str]:
        return [k for k in self.store.list("jobs/") if k.endswith("/output/selected-images.json")]

    def received_sop_uids(self) -> list[str]:
        return [
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in self.destination.files()
        ]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log()[-3000:]}" for n, p in self.processes.items())


@pytest.fixture
def deployment(settings: ServiceSettings, tmp_path: Path) -> Iterator[Deployment]:
    study = tmp_path / "study"
    write_brain_mr_study(study, seed=11)
    t1c = {
        str(ds.SOPInstanceUID)
        for ds in (
            pydicom.dcmread(p, stop_before_pixels=True) for p in study.rglob("*") if p.is_file()
        )
        if str(ds.get("SeriesDescription", "")) == "T1c SE AX post-contrast"
    }
    destination = StoreSCP(tmp_path / "pacs").start()
    receiver_port = free_port()
    config, pipelines = write_brain_deployment(tmp_path, receiver_port, destination)
    env = service_environment(settings, config, pipelines)
    processes = {name: ServiceProcess(name, env, tmp_path) for name in SERVICES}
    store = ObjectStore(settings)
    store.ensure_bucket()
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    broker.declare_service_queue("observer", ["job.#", "export.completed"])
    for process in processes.values():
        process.start()
    deployment = Deployment(
        settings, store, broker, processes, destination, receiver_port, study, t1c, tmp_path
    )
    try:
        wait_for_port(receiver_port, timeout=30)
        yield deployment
    finally:
        for process in processes.values():
            process.stop()
        destination.stop()
        broker.close()


def observed(broker: Broker) -> list[Envelope]:
    events: list[Envelope] = []
    while True:
        method, _, body = broker.channel.basic_get("seriesflow.observer", auto_ack=True)
        if method is None:
            return events
        events.append(Envelope.from_bytes(body))


def test_a_pushed_study_reaches_the_destination_with_its_selected_series(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.push_study()
    wait_until(lambda: len(deployment.selected_images()) == 1, 60, "selected-images.json")
    wait_until(
        lambda: len(deployment.destination.files()) >= len(deployment.t1c_sop_uids),
        60,
        "the T1c series at the destination",
    )
    events: list[Envelope] = []

    def export_completed() -> bool:
        events.extend(observed(deployment.broker))
        return any(e.type == "export.completed" for e in events)

    wait_until(export_completed, 30, "export.completed")
    assert len({e.event_id for e in events if e.type == "job.selected"}) == 1
    received = deployment.received_sop_uids()
    assert sorted(received) == sorted(deployment.t1c_sop_uids), deployment.logs()

    # The service-mode selection is operator mode's, byte for byte.
    (key,) = deployment.selected_images()
    in_store = json.loads(deployment.store.get_bytes(key))
    summary = run_parser_operator(
        deployment.study, tmp_path / "operator", ConversionOptions("nii.gz"), load_rules_file(RULES)
    )
    assert in_store == summary.selections


def test_the_parser_killed_mid_job_loses_nothing_and_sends_nothing_twice(
    deployment: Deployment,
) -> None:
    parser = deployment.processes["parser"]
    # A bigger job (a 100-slice CT besides the brain MR), so that the parser is killed well
    # inside its work rather than racing its end.
    write_ct_series(deployment.study / "ct", slices=100, size=256, seed=12)
    deployment.push_study()
    # Kill the parser as soon as it holds the job: the manifest is stored and the parser's
    # queue has no message ready (the parser took it and has not acknowledged it).
    wait_until(
        lambda: (
            any(k.endswith("/manifest.json") for k in deployment.store.list("jobs/"))
            and deployment.broker.stats("parser").messages == 0
        ),
        60,
        "the parser to take the job",
    )
    parser.kill()
    assert not deployment.selected_images(), "the kill came too late to test anything"
    parser.start()
    wait_until(lambda: len(deployment.selected_images()) == 1, 90, "selected-images.json")
    wait_until(
        lambda: len(deployment.destination.files()) >= len(deployment.t1c_sop_uids),
        60,
        "the T1c series at the destination",
    )
    # Give a duplicate export the time to show up, if there were one.
    wait_until(lambda: not deployment.broker.stats("exporter").messages, 30, "an idle exporter")
    received = deployment.received_sop_uids()
    assert len(received) == len(set(received)), "an instance reached the destination twice"
    assert set(received) == deployment.t1c_sop_uids, deployment.logs()
    assert deployment.broker.stats("parser").dead_letters == 0
