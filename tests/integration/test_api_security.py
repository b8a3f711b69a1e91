"""The config API's front door, against ``seriesflow config-api`` as a real process (uvicorn
on a free loopback port) with a real S3 server and RabbitMQ, spoken to with raw HTTP.

Issue 9 (6, 7): a rebound host name reaching the tokenless API, bodies read before the
token is checked and without a cap, /docs and /openapi.json open, patient names returned
by /rules/explain. Traffic stays on 127.0.0.1; the largest body is 100 MiB, once.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.selector.selecting import volume_series
from shared import keys
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from tests.unit.selection_support import brain_mr

from .infra import free_port, wait_for_port
from .processes import ServiceProcess, service_environment

MIB = 1024 * 1024
OPS_TOKEN = "ops-token-4f9a1c"
RESEARCH_TOKEN = "research-token-77b2e0"


@dataclass
class Api:
    process: ServiceProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MiB."""
        assert self.process.process is not None
        status = Path(f"/proc/{self.process.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024


StartApi = Callable[..., Api]


@pytest.fixture
def start_api(settings: ServiceSettings, tmp_path: Path) -> Iterator[StartApi]:
    started: list[Api] = []

    def start(**env: str) -> Api:
        port = free_port()
        environment = service_environment(settings, tmp_path, tmp_path)
        del environment["SERIESFLOW_CONFIG"], environment["SERIESFLOW_PIPELINES"]
        environment.update(
            {"SERIESFLOW_API_HOST": "127.0.0.1", "SERIESFLOW_API_PORT": str(port), **env}
        )
        process = ServiceProcess("config-api", environment, tmp_path).start()
        api = Api(process, port)
        started.append(api)
        deadline = time.monotonic() + 60
        while process.alive() and time.monotonic() < deadline:
            try:
                wait_for_port(port, timeout=0.5)
                return api
            except TimeoutError:
                continue
        pytest.fail(f"config-api did not start:\n{process.log()[-3000:]}")

    yield start
    for api in started:
        api.process.stop()


def raw_post(port: int, path: str, length: int, headers: dict[str, str]) -> tuple[bytes, int]:
    """POST ``length`` zero bytes, stopping as soon as the server answers; returns the
    answer's head and the number of body bytes sent. At most 60 s."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    block = bytes(MIB)
    sent = 0
    answer = b""
    deadline = time.monotonic() + 60
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        while time.monotonic() < deadline and b"\r\n\r\n" not in answer:
            readable, writable, _ = select.select([sock], [sock] if sent < length else [], [], 1)
            if readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                answer += data
            elif writable:
                try:
                    sent += sock.send(block[: min(MIB, length - sent)])
                except OSError:
                    break
    return answer.split(b"\r\n\r\n")[0], sent


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


# -- no token: loopback Host names only --------------------------------------------------


def test_tokenless_api_refuses_a_rebound_host_name(start_api: StartApi) -> None:
    api = start_api()
    destination = {"name": "pacs", "aeTitle": "EVIL", "hostIp": "127.0.0.1", "port": 11112}
    with httpx.Client(base_url=api.url, timeout=10) as http:
        evil = {"Host": f"evil.example:{api.port}"}
        for path in ("/api/v1/destinations", "/openapi.json", "/docs", "/api/config/claraaetitle"):
            refused = http.get(path, headers=evil)
            assert refused.status_code == 400, (path, refused.text)
            assert "not a loopback name" in refused.text
        posted = http.post("/api/v1/destinations", json=destination, headers=evil)
        assert posted.status_code == 400
        assert posted.json()["error"] == "host_not_allowed"
        clara = http.post("/api/config/destinationaetitle", json=destination, headers=evil)
        assert clara.status_code == 400
        assert clara.json()["kind"] == "Status"
        # A page on another site posting to the loopback address itself.
        page = {"Origin": "http://evil.example"}
        assert http.post("/api/v1/destinations", json=destination, headers=page).status_code == 403
        # Nothing was stored; loopback names still work, with any port.
        for host in ("localhost", f"127.0.0.1:{api.port}", f"[::1]:{api.port}"):
            listed = http.get("/api/v1/destinations", headers={"Host": host})
            assert (listed.status_code, listed.json()) == (200, []), host
        assert http.get("/openapi.json").status_code == 200
        assert http.get("/docs").status_code == 200
        assert http.get("/health").status_code == 200
    assert "request refused" in api.process.log()


# -- tokens: checked before the body, bodies capped --------------------------------------


def test_token_is_checked_before_a_100_mib_body_is_read(start_api: StartApi) -> None:
    api = start_api(SERIESFLOW_API_TOKEN=OPS_TOKEN)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        assert http.get("/health").status_code == 200
    before = api.peak_rss_mb()
    head, sent = raw_post(api.port, "/api/v1/pipelines", 100 * MIB, {})
    after = api.peak_rss_mb()
    print(f"100 MiB without a token: {sent} bytes sent, peak RSS {before:.0f} -> {after:.0f} MiB")
    assert after - before < 20, (before, after)
    assert status_of(head) == 401, head
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for path in ("/openapi.json", "/docs", "/api/v1/pipelines"):
            assert http.get(path).status_code == 401, path
            authorized = http.get(path, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
            assert authorized.status_code == 200, path
    # With the token, a 100 MiB declaration is refused unread too.
    head, sent = raw_post(
        api.port, "/api/v1/pipelines", 100 * MIB, {"Authorization": f"Bearer {OPS_TOKEN}"}
    )
    assert status_of(head) == 413, head
    assert api.peak_rss_mb() - before < 20


def test_a_10_mib_pipeline_with_a_token_is_refused_413(start_api: StartApi) -> None:
    api = start_api(SERIESFLOW_API_TOKEN=OPS_TOKEN)
    auth = {"Authorization": f"Bearer {OPS_TOKEN}"}
    big = {"name": "big", "rules": {"selections": []}, "description": "x" * (10 * MIB)}
    with httpx.Client(base_url=api.url, timeout=30, headers=auth) as http:
        refused = http.post("/api/v1/pipelines", json=big)
        assert refused.status_code == 413, refused.text[:300]
        assert "SERIESFLOW_API_MAX_BODY_BYTES" in refused.json()["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            yield b'{"name": "chunked", "rules": {"selections": []}, "description": "'
            for _ in range(2):
                yield b"x" * MIB
            yield b'"}'

        chunked = http.post(
            "/api/v1/pipelines", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413, chunked.text[:300]
        small = http.post("/api/v1/pipelines", json={"name": "small", "rules": {"selections": []}})
        assert small.status_code == 201, small.text[:300]
        assert [p["name"] for p in http.get("/api/v1/pipelines").json()] == ["small"]
        assert [r["name"] for r in http.get("/api/v1/audit").json()] == ["small"]


def test_the_body_cap_is_a_setting(start_api: StartApi) -> None:
    api = start_api(SERIESFLOW_API_MAX_BODY_BYTES=str(16 * MIB))
    big = {"name": "big", "rules": {"selections": []}, "description": "x" * (10 * MIB)}
    with httpx.Client(base_url=api.url, timeout=30) as http:
        stored = http.post("/api/v1/pipelines", json=big)
        assert stored.status_code == 201, stored.text[:300]


# -- patient identifiers -------------------------------------------------------------------


def test_explain_withholds_patient_names_unless_asked_and_allowed(
    start_api: StartApi, settings: ServiceSettings
) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    job = "e" * 32
    metadata = brain_mr()
    store.put_bytes(keys.output(job, "dicom-metadata.json"), metadata.model_dump_json().encode())
    store.put_json(keys.output(job, "series-images.json"), volume_series(metadata))
    api = start_api(
        SERIESFLOW_API_TOKENS=f"ops:{OPS_TOKEN},research:{RESEARCH_TOKEN}",
        SERIESFLOW_API_IDENTIFIER_READERS="ops",
    )
    rules = {
        "selections": [
            {
                "name": "jane",
                "conditions": {"PatientName": "(?i)doe", "PatientID": "P", "Modality": "MR"},
            }
        ]
    }
    request = {"jobId": job, "rules": rules}
    with httpx.Client(base_url=api.url, timeout=10) as http:
        for token in (OPS_TOKEN, RESEARCH_TOKEN):
            auth = {"Authorization": f"Bearer {token}"}
            answer = http.post("/api/v1/rules/explain", json=request, headers=auth)
            assert answer.status_code == 200, answer.text[:300]
            assert "Jane" not in answer.text, "a patient name in the answer"
            assert "(withheld)" in answer.json()["text"]
            assert answer.json()["explanation"]["result"]["jane"]  # still selects
        asked = http.post(
            "/api/v1/rules/explain?identifiers=true",
            json=request,
            headers={"Authorization": f"Bearer {RESEARCH_TOKEN}"},
        )
        assert asked.status_code == 403
        assert "Jane" not in asked.text, "a patient name in the answer"
        allowed = http.post(
            "/api/v1/rules/explain?identifiers=true",
            json=request,
            headers={"Authorization": f"Bearer {OPS_TOKEN}"},
        )
        assert allowed.status_code == 200
        assert "Doe^Jane" in allowed.json()["text"]
        checks = json.dumps(allowed.json()["explanation"])
        assert "Doe^Jane" in checks
    log = api.process.log()
    assert "patient identifiers revealed" in log
    assert "Jane" not in log, "a patient name in the log"
