"""Retention with real parts: a completed job's objects are deleted once its time is up, a
failed one (its export gave up) is kept; ``seriesflow retention`` and the config API's
periodic purge and routes.

RabbitMQ (own vhost), SeaweedFS (own bucket), dcmtk storescu as the modality; receiver,
parser, selector, exporter and config API as processes logging at INFO.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.config_api.app import create_app
from services.config_api.settings import ConfigApiSettings
from shared.jobstore import JobStore
from shared.manifest import JobManifest
from shared.samples import write_brain_mr_study
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import dcmtk, free_port, wait_for_port
from .processes import ServiceProcess, service_environment, wait_until

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "examples" / "rules" / "clara-t1c.json"


def push(port: int, called: str, study: Path) -> None:
    result = subprocess.run(
        [dcmtk("storescu"), "--aetitle", "MODALITY", "--call", called, "--scan-directories",
         "--recurse", "--required", "127.0.0.1", str(port), str(study)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def seriesflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seriesflow", "retention", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def job_objects(store: ObjectStore, manifest: JobManifest) -> set[str]:
    """Everything stored for the job: its prefix and its instances as received."""
    listed = set(store.list(f"jobs/{manifest.job_id}/"))
    return listed | {i.key for i in manifest.instances if store.exists(i.key)}


def test_a_completed_job_is_deleted_after_its_time_and_a_failed_one_kept(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    write_brain_mr_study(study, seed=5)
    port = free_port()
    closed = free_port()  # nothing listens: the export to it gives up
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dicom": {
                    "scp": {
                        "host": "127.0.0.1",
                        "port": port,
                        "ae-titles": [
                            {"ae-title": "RESEARCH", "pipeline": "select"},
                            {"ae-title": "ROUTED", "pipeline": "select-and-send"},
                        ],
                        "reject-unknown-sources": False,
                    },
                    "scu": {
                        "destinations": [
                            {"name": "gone", "host-ip": "127.0.0.1", "port": closed,
                             "ae-title": "GONE"}
                        ]
                    },
                }
            }
        )
    )  # fmt: skip
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "select.yaml").write_text(
        yaml.safe_dump({"name": "select", "rules-file": str(RULES)})
    )
    (pipelines / "send.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "select-and-send",
                "rules-file": str(RULES),
                "routes": [{"selection": "T1C", "destinations": ["gone"]}],
            }
        )
    )
    env = service_environment(settings, config, pipelines)
    processes = {
        name: ServiceProcess(name, env, tmp_path).start()
        for name in ("receiver", "parser", "selector", "exporter")
    }
    store = ObjectStore(settings)
    jobs = JobStore(store)
    try:
        wait_for_port(port, timeout=30)
        push(port, "RESEARCH", study)
        push(port, "ROUTED", study)

        def finished() -> bool:
            states = sorted(j.state for j in jobs.list_jobs())
            return len(states) == 2 and "running" not in states

        wait_until(finished, 120, "two finished jobs")
    finally:
        for process in processes.values():
            process.stop()
    logs = "\n".join(p.log()[-2000:] for p in processes.values())
    by_pipeline = {j.pipeline: j for j in jobs.list_jobs()}
    assert set(by_pipeline) == {"select", "select-and-send"}, logs
    completed = jobs.manifest(by_pipeline["select"].job_id)
    failed = jobs.manifest(by_pipeline["select-and-send"].job_id)
    completed_objects = job_objects(store, completed)
    failed_objects = job_objects(store, failed)
    assert len(completed.instances) > 0
    assert {i.key for i in completed.instances} <= completed_objects
    assert any(k.endswith("selected-images.json") for k in completed_objects)

    # The command line: everything held, nothing due under the defaults (7 d / 30 d).
    listed = seriesflow(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    held = {j["jobId"]: j for j in json.loads(listed.stdout)}
    assert held[completed.job_id]["state"] == "completed"
    assert held[completed.job_id]["due"] is False
    assert held[completed.job_id]["keepSeconds"] == 7 * 86400
    assert held[failed.job_id]["keepSeconds"] == 30 * 86400

    # A dry run with completed jobs kept 1 s: says the completed job, deletes nothing.
    time.sleep(1.5)
    dry = seriesflow(env, "purge", "--dry-run", "--completed", "1s", "--json")
    assert dry.returncode == 0, dry.stderr
    report: dict[str, Any] = json.loads(dry.stdout)
    assert [j["jobId"] for j in report["purged"]] == [completed.job_id]
    assert report["deletedObjects"] == 0
    assert job_objects(store, completed) == completed_objects

    # The API (same policy as the service's environment): the same view, behind tokens.
    api_settings = ConfigApiSettings(
        **{
            **settings.model_dump(),
            "api_token": SecretStr("retention-token-1"),
            "retention_completed": 1.0,
        }
    )
    client = TestClient(create_app(api_settings, store, None), base_url="http://localhost:5000")
    assert client.get("/api/v1/retention").status_code == 401
    assert client.post("/api/v1/retention/purge").status_code == 401
    client.headers["Authorization"] = "Bearer retention-token-1"
    answer = client.get("/api/v1/retention")
    assert answer.status_code == 200, answer.text
    assert answer.json()["due"] == 1
    states = {j["jobId"]: (j["state"], j["due"]) for j in answer.json()["jobs"]}
    assert states == {completed.job_id: ("completed", True), failed.job_id: ("failed", False)}
    dry_api = client.post("/api/v1/retention/purge", params={"dryRun": "true"})
    assert dry_api.status_code == 200, dry_api.text
    assert [j["jobId"] for j in dry_api.json()["purged"]] == [completed.job_id]
    assert job_objects(store, completed) == completed_objects

    # The config API service purges periodically: completed jobs kept 1 s, checked every 1 s.
    api_env = dict(
        env,
        SERIESFLOW_API_PORT=str(free_port()),
        SERIESFLOW_RETENTION_COMPLETED="1s",
        SERIESFLOW_RETENTION_INTERVAL="1s",
    )
    api = ServiceProcess("config-api", api_env, tmp_path).start()
    try:
        wait_until(
            lambda: not any(store.exists(k) for k in completed_objects),
            60,
            "the completed job's objects to be deleted",
        )
    finally:
        api.stop()
    api_log = api.log()
    assert "retention: job deleted" in api_log, api_log
    assert "Traceback" not in api_log
    # The failed job (its export gave up) was looked at by the same purge and kept whole.
    assert job_objects(store, failed) == failed_objects
    assert jobs.job(completed.job_id) is None

    # Once the failed retention is up too, a purge deletes it.
    purged = seriesflow(env, "purge", "--failed", "1s", "--json")
    assert purged.returncode == 0, purged.stderr
    assert [j["jobId"] for j in json.loads(purged.stdout)["purged"]] == [failed.job_id]
    assert not any(store.exists(k) for k in failed_objects)
