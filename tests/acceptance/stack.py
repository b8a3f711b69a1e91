"""How the acceptance suite reaches a running stack: DICOM, HTTP, the store and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from minio import Minio

from tests.integration.infra import dcmtk

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "seriesflow"
RECEIVER_AE = "SERIESFLOW"


@dataclass(frozen=True)
class Study:
    """A study a modality sent: its UID and every instance, series UID -> SOP Instance UIDs."""

    study_uid: str
    series: dict[str, set[str]]
    descriptions: dict[str, str]

    def series_described(self, description: str) -> str:
        (uid,) = [u for u, d in self.descriptions.items() if d == description]
        return uid

    @classmethod
    def read(cls, folder: Path) -> Study:
        series: dict[str, set[str]] = {}
        descriptions: dict[str, str] = {}
        studies = set()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            studies.add(str(dataset.StudyInstanceUID))
            uid = str(dataset.SeriesInstanceUID)
            series.setdefault(uid, set()).add(str(dataset.SOPInstanceUID))
            descriptions[uid] = str(dataset.get("SeriesDescription", ""))
        (study_uid,) = studies
        return cls(study_uid, series, descriptions)


@dataclass
class Stack:
    target: str
    receiver_port: int
    api_port: int
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    orthanc_http_port: int
    orthanc_user: str
    orthanc_password: str
    token: str
    cli_prefix: list[str]
    cli_env: dict[str, str]
    logs: Path | None = None
    _api: httpx.Client | None = field(default=None, repr=False)

    # -- HTTP ---------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api(self) -> httpx.Client:
        if self._api is None:
            self._api = httpx.Client(
                base_url=self.api_url,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
        return self._api

    def orthanc(self, path: str) -> Any:
        response = httpx.get(
            f"http://127.0.0.1:{self.orthanc_http_port}{path}",
            auth=(self.orthanc_user, self.orthanc_password),
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def orthanc_instances(self, study_uid: str) -> dict[str, list[str]]:
        """Series UID -> SOP Instance UIDs (one entry per stored instance) of a study in Orthanc."""
        found: dict[str, list[str]] = {}
        for study in self._orthanc_study_ids(study_uid):
            for series in self.orthanc(f"/studies/{study}/series?expand"):
                series_uid = series["MainDicomTags"]["SeriesInstanceUID"]
                instances = self.orthanc(f"/series/{series['ID']}/instances?expand")
                found[series_uid] = [i["MainDicomTags"]["SOPInstanceUID"] for i in instances]
        return found

    def _orthanc_study_ids(self, study_uid: str) -> list[str]:
        response = httpx.post(
            f"http://127.0.0.1:{self.orthanc_http_port}/tools/find",
            auth=(self.orthanc_user, self.orthanc_password),
            json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
            timeout=30,
        )
        response.raise_for_status()
        return [str(i) for i in response.json()]

    # -- the store ----------------------------------------------------------------------------

    def store(self) -> Minio:
        return Minio(self.s3_endpoint, self.s3_access_key, self.s3_secret_key, secure=False)

    def stored_json(self, key: str) -> Any:
        response = self.store().get_object(BUCKET, key)
        try:
            return json.loads(response.read())
        finally:
            response.close()
            response.release_conn()

    # -- jobs ---------------------------------------------------------------------------------

    def job_ids(self) -> set[str]:
        response = self.api.get("/api/v1/jobs", params={"limit": 200})
        assert response.status_code == 200, response.text
        return {job["jobId"] for job in response.json()}

    def wait_for_new_job(
        self, before: set[str], done: Callable[[dict[str, Any]], bool], timeout: float = 180
    ) -> dict[str, Any]:
        """The one job that is not in ``before``, once ``done(its summary)`` holds."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            response = self.api.get("/api/v1/jobs", params={"limit": 200})
            assert response.status_code == 200, response.text
            seen = [j for j in response.json() if j["jobId"] not in before]
            assert len(seen) <= 1, f"one study became several jobs: {seen}"
            if seen and seen[0]["stage"] == "failed":
                detail = self.api.get(f"/api/v1/jobs/{seen[0]['jobId']}").json()
                raise AssertionError(f"the job failed: {detail.get('errors')}\n{self.log_tail()}")
            if seen and done(seen[0]):
                return seen[0]
            time.sleep(0.5)
        raise AssertionError(f"no finished job after {timeout} s: {seen}\n{self.log_tail()}")

    # -- DICOM --------------------------------------------------------------------------------

    def echo(self, called: str = RECEIVER_AE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", called, "127.0.0.1",
             str(self.receiver_port)],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip

    def send(self, folder: Path, called: str = RECEIVER_AE) -> None:
        """A modality sends every file below ``folder`` in one association (dcmtk storescu)."""
        result = subprocess.run(
            [dcmtk("storescu"), "-aet", "MODALITY", "-aec", called, "+sd", "+r",
             "127.0.0.1", str(self.receiver_port), str(folder)],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    # -- the command line ---------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``seriesflow ARGS`` where a user of this stack runs it."""
        env = {**os.environ, **self.cli_env} if self.cli_env else None
        return subprocess.run(
            [*self.cli_prefix, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT,
        )

    def log_tail(self) -> str:
        if self.target == "compose":
            result = subprocess.run(
                ["/usr/bin/docker", "compose", "logs", "--no-color", "--tail", "40"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
            )
            return result.stdout[-6000:]
        if self.logs is None:
            return ""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )
