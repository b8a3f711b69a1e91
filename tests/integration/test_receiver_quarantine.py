"""The quarantine as an operator uses it: a peer's abort keeps its acknowledged instances,
``seriesflow quarantine`` and ``/api/v1/quarantine`` show them, a release becomes one job
(once), a delete removes them, and what nobody claims expires."""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from services.config_api.app import create_app
from services.receiver import statuses
from services.receiver.job import job_id_for
from shared import keys
from shared.broker import Broker
from shared.events import JobReceived
from shared.settings import ServiceSettings

from .infra import free_port
from .test_receiver import (
    ct,  # noqa: F401  (fixture)
    incoming,
    observer,  # noqa: F401  (fixture)
    received,
    running,
    scu_association,
    wait_for_messages,
    wait_until,
    write_config,
)


def aborted(port: int, files: list[Path]) -> None:
    assoc = scu_association(port)
    for path in files:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == statuses.SUCCESS
    assoc.abort()


def cli(settings: ServiceSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
    env.update(
        SERIESFLOW_S3_ENDPOINT=settings.s3_endpoint,
        SERIESFLOW_S3_ACCESS_KEY=settings.s3_access_key.get_secret_value(),
        SERIESFLOW_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
        SERIESFLOW_S3_BUCKET=settings.s3_bucket,
        SERIESFLOW_S3_SECURE="false",
        SERIESFLOW_AMQP_URL=settings.amqp_url.get_secret_value(),
    )
    return subprocess.run(
        [sys.executable, "-m", "seriesflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_operator_sees_releases_and_deletes_quarantined_instances(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.yaml", port)
    with running(settings, config, quarantine_check_seconds=0.3) as receiver:
        store = receiver.job_store.objects
        aborted(port, ct[:3])
        wait_until(lambda: len(list(store.list("quarantine/"))) == 1, 10, "first quarantined")
        aborted(port, ct[3:])
        wait_until(lambda: len(list(store.list("quarantine/"))) == 2, 10, "second quarantined")
        api = TestClient(create_app(settings, store, None), base_url="http://localhost")
        listed = api.get("/api/v1/quarantine")
        assert listed.status_code == 200, listed.text
        first, second = listed.json()
        assert (first["instances"], second["instances"]) == (3, len(ct) - 3)
        assert first["ended"] == "aborted" and not first["releaseRequested"]

        shown = cli(settings, "status")  # no broker queues declared yet is fine
        assert first["associationId"] in shown.stdout, shown.stdout + shown.stderr

        # Released as a job through the CLI.
        result = cli(settings, "quarantine", "release", first["associationId"])
        assert result.returncode == 0, result.stdout + result.stderr
        (message,) = wait_for_messages(observer, 1)
        body = message.body
        assert isinstance(body, JobReceived) and body.instance_count == 3
        assert message.job_id == job_id_for([first["associationId"]])
        time.sleep(1.0)
        assert received(observer) == [], "one job"
        again = cli(settings, "quarantine", "release", first["associationId"])
        assert again.returncode == 1 and "not quarantined" in again.stderr
        assert [q["associationId"] for q in api.get("/api/v1/quarantine").json()] == [
            second["associationId"]
        ]

        # Deleted through the API.
        gone = api.delete(f"/api/v1/quarantine/{second['associationId']}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["deletedObjects"] == len(ct) - 3 + 1
        assert api.get("/api/v1/quarantine").json() == []
        assert api.delete(f"/api/v1/quarantine/{second['associationId']}").status_code == 404
        assert api.post("/api/v1/quarantine/not-an-id/release").status_code == 400
        assert len(incoming(store)) == 3, "only the released job's instances remain"
        assert cli(settings, "quarantine", "delete", second["associationId"]).returncode == 1


def test_quarantined_instances_expire_after_the_quarantine_time(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.yaml", port)
    with running(
        settings, config, quarantine_check_seconds=0.3, quarantine_seconds=2.0
    ) as receiver:
        aborted(port, ct[:2])
        wait_until(
            lambda: list(receiver.job_store.objects.list("quarantine/")) != [], 10, "quarantined"
        )
        assert len(incoming(receiver.job_store.objects)) == 2
        wait_until(
            lambda: list(receiver.job_store.objects.list("quarantine/")) == [], 15, "expired"
        )
        assert incoming(receiver.job_store.objects) == []
        assert list(receiver.job_store.objects.list(keys.QUARANTINE)) == []
        assert received(observer) == []
