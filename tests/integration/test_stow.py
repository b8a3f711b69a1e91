"""DICOMweb STOW-RS into the receiver (services/receiver/stow.py), with real parts only:
RabbitMQ (own vhost), SeaweedFS, curl with hand-built multipart bodies, ``dicomweb-client``
from PyPI, dcmtk storescu for the C-STORE comparison, and the receiver, parser and
selector as processes for the end-to-end test.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydantic import SecretStr

from services.receiver import statuses
from shared.broker import Broker
from shared.manifest import JobManifest
from shared.samples import write_brain_mr_study, write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import dcmtk, dcmtk_available, free_port, start_seaweedfs, wait_for_port
from .processes import ServiceProcess, service_environment, wait_until
from .test_receiver import (
    observer,
    received,
    running,
    storescu,
    wait_for_messages,
    write_config,
)

__all__ = ["observer"]  # the fixture, used by name

TOKEN = "stow-test-token-1"
BOUNDARY = "seriesflow-test-boundary-7c1f"
FAILED = "00081198"
REFERENCED = "00081199"
INSTANCE_UID = "00081155"
REASON = "00081197"

pytestmark = pytest.mark.skipif(not dcmtk_available("storescu"), reason="dcmtk is not installed")


# -- helpers ------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, bytes]]) -> bytes:
    """A multipart/related body, by hand: (Content-Type, content) per part."""
    body = b""
    for content_type, content in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content
        body += b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


@dataclass
class Answer:
    status: int
    headers: str
    body: dict[str, Any]

    def uids(self, sequence: str) -> list[str]:
        items = self.body.get(sequence, {}).get("Value", [])
        return [item[INSTANCE_UID].get("Value", [""])[0] for item in items]

    def reasons(self) -> list[int]:
        return [item[REASON]["Value"][0] for item in self.body.get(FAILED, {}).get("Value", [])]


def curl(
    url: str,
    body: bytes,
    tmp_path: Path,
    token: str | None = TOKEN,
    content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
    headers: tuple[str, ...] | list[str] = (),
) -> Answer:
    (tmp_path / "body").write_bytes(body)
    command = [
        "curl", "-sS", "-X", "POST", "--data-binary", f"@{tmp_path / 'body'}",
        "-H", f"Content-Type: {content_type}", "-H", "Accept: application/dicom+json",
        "-D", str(tmp_path / "headers"), "-o", str(tmp_path / "answer"),
        "-w", "%{http_code}", url,
    ]  # fmt: skip
    if token is not None:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    for header in headers:
        command[1:1] = ["-H", header]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "answer").read_text()
    return Answer(int(result.stdout), (tmp_path / "headers").read_text(), json.loads(text or "{}"))


def curl_until(status: int, url: str, body: bytes, tmp_path: Path, timeout: float = 15) -> Answer:
    """:func:`curl` again until the answer has ``status`` (what another request is doing
    decides it); the last answer."""
    deadline = time.monotonic() + timeout
    while (answer := curl(url, body, tmp_path)).status != status:
        assert time.monotonic() < deadline, f"no {status} within {timeout} s: {answer}"
        time.sleep(0.1)
    return answer


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def manifests(store: ObjectStore) -> list[JobManifest]:
    return [
        JobManifest.model_validate_json(store.get_bytes(k))
        for k in store.list("jobs/")
        if k.endswith("/manifest.json")
    ]


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "ct"
    write_ct_series(folder, slices=4, size=16, seed=5)
    return sorted(folder.rglob("*.dcm"))


# -- in process: the receiver with STOW-RS on ---------------------------------------------


def test_stow_stores_each_instance_and_reports_each_failure(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    dicom_port, stow_port = free_port(), free_port()
    config = write_config(tmp_path / "c.yaml", dicom_port)
    url = f"http://127.0.0.1:{stow_port}/dicomweb/SERIESFLOW/studies"
    with running(
        settings, config, stow_port=stow_port, api_token=SecretStr(TOKEN), stow_max_bytes=65536
    ) as receiver:
        good = [("application/dicom", p.read_bytes()) for p in ct[:3]]
        body = multipart([good[0], ("application/dicom", b"not a DICOM file"), *good[1:]])

        # No token, or a wrong one: 401, nothing stored.
        assert curl(url, body, tmp_path, token=None).status == 401
        assert curl(url, body, tmp_path, token="wrong").status == 401
        assert list(receiver.job_store.objects.list("incoming/")) == []

        # Bad requests: unknown AE title, not multipart/related, too large (refused unread).
        assert curl(url.replace("SERIESFLOW", "NOSUCHAE"), body, tmp_path).status == 404
        assert curl(url, body, tmp_path, content_type="application/dicom").status == 415
        large = multipart([("application/dicom", b"\0" * 70000)])
        assert curl(url, large, tmp_path).status == 413
        chunked = curl(url, large, tmp_path, headers=["Transfer-Encoding: chunked"])
        assert chunked.status == 413, chunked

        # Three good parts and a bad one: 202, three referenced, one failed (0xC000).
        answer = curl(url, body, tmp_path)
        assert answer.status == 202, answer
        assert "application/dicom+json" in answer.headers
        assert answer.uids(REFERENCED) == [sop_uid(p) for p in ct[:3]]
        assert answer.reasons() == [statuses.CANNOT_UNDERSTAND]
        assert "warning: 299" in answer.headers.lower()
        wait_for_messages(observer, 1)
        (manifest,) = manifests(receiver.job_store.objects)
        assert manifest.called_ae_title == "SERIESFLOW"
        assert manifest.calling_ae_title == "STOW-RS"
        assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(
            sop_uid(p) for p in ct[:3]
        )
        # Stored as received: the data set bytes of the file, after our File Meta.
        stored = receiver.job_store.objects.get_bytes(manifest.instances[0].key)
        original = next(p for p in ct if sop_uid(p) == manifest.instances[0].sop_instance_uid)
        assert pydicom.dcmread(original).PixelData == pydicom.dcmread(io.BytesIO(stored)).PixelData

        # The study in the path must be the instance's study: else 409, 0xA900.
        study = str(pydicom.dcmread(ct[3], stop_before_pixels=True).StudyInstanceUID)
        one = multipart([("application/dicom", ct[3].read_bytes())])
        wrong = curl(f"{url}/1.2.3.4", one, tmp_path)
        assert wrong.status == 409, wrong
        assert wrong.reasons() == [statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS]
        right = curl(f"{url}/{study}", one, tmp_path)
        assert right.status == 200, right
        assert right.uids(REFERENCED) == [sop_uid(ct[3])]

        # A real DICOMweb client.
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(
            url=f"http://127.0.0.1:{stow_port}/dicomweb/SERIESFLOW",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        result = client.store_instances([pydicom.dcmread(ct[0])])
        assert [str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence] == [
            sop_uid(ct[0])
        ]
        wait_for_messages(observer, 2)


def test_stow_while_the_store_is_down_answers_failure_for_each_instance(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    own = start_seaweedfs(tmp_path / "seaweedfs")
    try:
        dicom_port, stow_port = free_port(), free_port()
        config = write_config(tmp_path / "c.yaml", dicom_port)
        with running(
            settings,
            config,
            s3_endpoint=own.endpoint,
            s3_access_key=SecretStr(own.access_key),
            s3_secret_key=SecretStr(own.secret_key),
            stow_port=stow_port,
            store_timeout_seconds=3.0,
        ):
            url = f"http://127.0.0.1:{stow_port}/dicomweb/SERIESFLOW/studies"
            own.stop()
            answer = curl(
                url, multipart([("application/dicom", p.read_bytes()) for p in ct]), tmp_path
            )
            assert answer.status == 409, answer
            assert sorted(answer.uids(FAILED)) == sorted(sop_uid(p) for p in ct)
            assert answer.reasons() == [statuses.OUT_OF_RESOURCES] * len(ct)
            assert REFERENCED not in answer.body
            time.sleep(1.0)
            assert received(observer) == []
    finally:
        own.stop()


def test_a_study_sent_by_stow_requests_and_an_association_is_one_job(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    dicom_port, stow_port = free_port(), free_port()
    ae = [{"ae-title": "SERIESFLOW", "pipeline": "ct", "grouping": "study", "timeout": 2}]
    config = write_config(tmp_path / "c.yaml", dicom_port, ae_titles=ae)
    url = f"http://127.0.0.1:{stow_port}/dicomweb/SERIESFLOW/studies"
    with running(settings, config, stow_port=stow_port) as receiver:
        for path in ct[:2]:
            answer = curl(url, multipart([("application/dicom", path.read_bytes())]), tmp_path)
            assert answer.status == 200, answer
        result = storescu(dicom_port, ct[2:])
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(wait_for_messages(observer, 1, timeout=20)) == 1
        time.sleep(3)
        assert received(observer) == []
        (manifest,) = manifests(receiver.job_store.objects)
        assert sorted(i.sop_instance_uid for i in manifest.instances) == sorted(map(sop_uid, ct))
        assert len(manifest.associations) == 3


# -- processes: STOW-RS and C-STORE of one study end in the same selection ---------------


@pytest.fixture
def stack(settings: ServiceSettings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    dicom_port, stow_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dicom": {
                    "scp": {
                        "host": "127.0.0.1",
                        "port": dicom_port,
                        "ae-titles": [{"ae-title": "SERIESFLOW"}],
                        "reject-unknown-sources": False,
                    }
                },
                "pipeline-mappings": [{"name": "brain_t1c", "clara-ae-title": "SERIESFLOW"}],
            }
        )
    )
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    rules = Path(__file__).resolve().parents[2] / "examples" / "rules" / "clara-t1c.json"
    (pipelines / "brain.yaml").write_text(
        yaml.safe_dump({"name": "brain_t1c", "image-format": "nii.gz", "rules-file": str(rules)})
    )
    env = service_environment(settings, config, pipelines)
    env.update({"SERIESFLOW_STOW_PORT": str(stow_port), "SERIESFLOW_API_TOKEN": TOKEN})
    processes = {n: ServiceProcess(n, env, tmp_path) for n in ("receiver", "parser", "selector")}
    for process in processes.values():
        process.start()
    try:
        wait_for_port(dicom_port, timeout=30)
        wait_for_port(stow_port, timeout=30)
        yield {"dicom_port": dicom_port, "stow_port": stow_port, "processes": processes}
    finally:
        for process in processes.values():
            process.stop()


def test_a_study_sent_by_stow_is_selected_exactly_like_the_same_study_sent_by_c_store(
    settings: ServiceSettings, stack: dict[str, Any], tmp_path: Path
) -> None:
    study = tmp_path / "study"
    write_brain_mr_study(study, seed=11)
    files = sorted(p for p in study.rglob("*") if p.is_file())
    assert len({sop_uid(p) for p in files}) == len(files)
    store = ObjectStore(settings)

    def selected() -> dict[str, Any]:
        found: dict[str, Any] = {}
        for manifest in manifests(store):
            key = f"jobs/{manifest.job_id}/output/selected-images.json"
            if store.exists(key):
                found[manifest.calling_ae_title] = json.loads(store.get_bytes(key))
        return found

    logs = lambda: "\n".join(p.log()[-3000:] for p in stack["processes"].values())  # noqa: E731
    cstore = subprocess.run(
        [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "SERIESFLOW", "127.0.0.1",
         str(stack["dicom_port"]), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cstore.returncode == 0, cstore.stdout + cstore.stderr

    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(
        url=f"http://127.0.0.1:{stack['stow_port']}/dicomweb/SERIESFLOW",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    result = client.store_instances([pydicom.dcmread(p) for p in files])
    assert len(result.ReferencedSOPSequence) == len(files)
    assert "FailedSOPSequence" not in result

    wait_until(lambda: len(selected()) == 2, 120, "two selected-images.json")
    by_way = selected()
    assert by_way["STOW-RS"], logs()
    assert by_way["STOW-RS"] == by_way["MODALITY"], logs()
    stow, cstore_job = (
        next(m for m in manifests(store) if m.calling_ae_title == c)
        for c in ("STOW-RS", "MODALITY")
    )
    assert sorted(i.sop_instance_uid for i in stow.instances) == sorted(
        i.sop_instance_uid for i in cstore_job.instances
    )


def test_stow_requests_beyond_the_limit_are_answered_503_unread_and_a_slot_frees(
    settings: ServiceSettings, tmp_path: Path, ct: list[Path]
) -> None:
    """Each request holds its body in memory: with SERIESFLOW_STOW_MAX_REQUESTS=1, a second
    request while one is in progress is answered 503 with Retry-After; once the first ends,
    even by its client going away in the middle of its body, the next is served."""
    dicom_port, stow_port = free_port(), free_port()
    config = write_config(tmp_path / "c.yaml", dicom_port)
    url = f"http://127.0.0.1:{stow_port}/dicomweb/SERIESFLOW/studies"
    body = multipart([("application/dicom", ct[0].read_bytes())])
    with running(
        settings, config, stow_port=stow_port, api_token=SecretStr(TOKEN), stow_max_requests=1
    ):
        wait_for_port(stow_port)
        for ending in ("completes", "goes away"):
            slow = socket.create_connection(("127.0.0.1", stow_port), timeout=10)
            try:
                head = (
                    "POST /dicomweb/SERIESFLOW/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n"
                    'Content-Type: multipart/related; type="application/dicom"; '
                    f"boundary={BOUNDARY}\r\n\r\n"
                )
                slow.sendall(head.encode() + body[:100])  # in progress: its body half sent
                busy = curl_until(503, url, body, tmp_path)
                assert "retry-after: 5" in busy.headers.lower(), busy
                assert "STOW_MAX_REQUESTS" in busy.body["error"]
                if ending == "completes":
                    slow.sendall(body[100:])
                    assert slow.recv(4096).startswith(b"HTTP/1.1 200"), ending
            finally:
                slow.close()
            served = curl_until(200, url, body, tmp_path)
            assert served.uids(REFERENCED) == [sop_uid(ct[0])], ending
