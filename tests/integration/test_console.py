"""The web console in headless Chromium against a running config API (uvicorn), a real
store (SeaweedFS), real RabbitMQ, and jobs made by the real parser and selector.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no
WebSocket library needed): pages are loaded, the replay button is clicked, and a
screenshot of every page is kept under the folder the test prints (``SERIESFLOW_ARTIFACTS``
if set, else pytest's tmp folder).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.config_api.app import create_app
from services.config_api.main import ConfigApiService
from services.config_api.settings import ConfigApiSettings
from shared.broker import Broker
from shared.events import JobFailed, JobSelected, new_id
from shared.jobstore import JobStore
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import free_port, wait_for_port
from .test_parser_selector import brain_study, received_event, running, submit, write_pipeline

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (scripts/setup.sh installs it)",
)


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol on fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None, "chromium is not installed"
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child, before exec: fd 3 reads commands, fd 4 answers
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            preexec_fn=fds,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._buffer = b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    assert "error" not in answer, answer["error"]
                    return answer["result"]
            left = deadline - time.monotonic()
            assert left > 0, f"Chromium did not answer {method}"
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                assert chunk, "Chromium closed the pipe"
                self._buffer += chunk

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def load(self, url: str) -> str:
        """Load ``url``; the page's text once it (and its images) are loaded."""
        self.call("Page.navigate", self.session, url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
        return str(self.evaluate("document.body.innerText"))

    def screenshot(self, path: Path) -> Path:
        shot = self.call(
            "Page.captureScreenshot", self.session, format="png", captureBeyondViewport=True
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):  # it may close before answering
            self.call("Browser.close")
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SERIESFLOW_ARTIFACTS") or tmp_path) / "console-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {folder}")
    return folder


def test_console_pages_and_replay_in_chromium(
    settings: ServiceSettings, tmp_path: Path, chromium: Chromium, artifacts: Path
) -> None:
    study = brain_study(tmp_path / "study", seed=21)
    pipelines = write_pipeline(tmp_path / "pipelines", "brain", "nii.gz", [])
    with running(settings, pipelines) as flow:
        good = submit(flow.store, flow.broker, study, "brain")
        poison = received_event(new_id(), "nosuch", 3)  # no such pipeline: dead-lettered
        flow.broker.publish(poison)
        flow.observer.wait(flow.observer.count(JobSelected, good.job_id, 1), timeout=120)
        flow.observer.wait(flow.observer.count(JobFailed, poison.job_id, 1))
        flow.stop()  # nobody consumes now: a replayed dead letter stays in the queue
        assert flow.broker.stats("parser").dead_letters == 1

    port = free_port()
    config = ConfigApiSettings(
        **{**settings.model_dump(), "host": "127.0.0.1", "port": port, "pipelines": pipelines}
    )
    with ConfigApiService(config):
        wait_for_port(port, timeout=30)
        base = f"http://127.0.0.1:{port}"
        destination = {"name": "pacs", "aeTitle": "PACS", "hostIp": "10.0.0.5", "port": 104}
        assert httpx.post(f"{base}/api/v1/destinations", json=destination).status_code == 201

        text = chromium.load(f"{base}/console/jobs")
        assert good.job_id in text and poison.job_id in text
        chromium.screenshot(artifacts / "jobs.png")
        text = chromium.load(f"{base}/console/jobs?state=failed&ae=&pipeline=&since=1h")
        assert poison.job_id in text and good.job_id not in text
        text = chromium.load(f"{base}/console/jobs?state=&ae=SERIESFLOW&pipeline=brain&since=")
        assert good.job_id in text and poison.job_id not in text
        text = chromium.load(f"{base}/console/jobs?state=&ae=OTHER&pipeline=&since=")
        assert "0 job(s)" in text

        text = chromium.load(f"{base}/console/jobs/{good.job_id}")
        for stage in ("job created", "received", "parsed", "selected"):
            assert stage in text
        assert "T1C" in text  # the selection the T1 post-contrast series fell into
        assert "T1c SE AX post-contrast" in text
        previews = chromium.evaluate(
            "[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(previews) == 6  # one per volume of the brain study
        assert all(done and width > 100 and height > 50 for done, width, height in previews)
        chromium.screenshot(artifacts / "job.png")
        chromium.screenshot(tmp_path / "console.png")

        text = chromium.load(f"{base}/console/jobs/{poison.job_id}")
        assert "pipeline nosuch is not defined" in text
        chromium.screenshot(artifacts / "failed-job.png")

        text = chromium.load(f"{base}/console/queues")
        assert "seriesflow.parser" in text
        chromium.screenshot(artifacts / "queues.png")
        text = chromium.load(f"{base}/console/config")
        assert "pacs" in text and "10.0.0.5" in text and "brain" in text
        chromium.screenshot(artifacts / "config.png")

        text = chromium.load(f"{base}/console/dead-letters")
        assert "pipeline nosuch is not defined" in text
        chromium.screenshot(artifacts / "dead-letters.png")
        chromium.evaluate("document.getElementById('replay-parser').click()")
        chromium.wait_for(
            "location.search.includes('replayed=1') && document.readyState === 'complete'"
        )
        assert "re-published 1 dead letter(s) of parser" in chromium.evaluate(
            "document.body.innerText"
        )
        chromium.screenshot(artifacts / "replayed.png")

    with Broker(settings, "test") as broker:
        broker.connect(attempts=3)
        stats = broker.stats("parser")
    assert (stats.dead_letters, stats.messages) == (0, 1)  # back in the parser's queue
    print(f"job page screenshot: {tmp_path / 'console.png'}")


def test_console_needs_the_token_and_refuses_foreign_pages(settings: ServiceSettings) -> None:
    store = ObjectStore(settings)
    store.ensure_bucket()
    config = ConfigApiSettings(**{**settings.model_dump(), "api_token": SecretStr("t0ken-abc")})
    client = TestClient(create_app(config, store, None), base_url="http://127.0.0.1:5000")
    unsigned = client.get("/console/jobs", follow_redirects=False)  # no token, no cookie
    assert unsigned.status_code == 303
    assert unsigned.headers["location"] == "/console/login?next=%2Fconsole%2Fjobs"
    post = client.post("/console/dead-letters/parser/replay", data={}, follow_redirects=False)
    assert post.status_code == 303 and post.headers["location"] == "/console/login"
    wrong = client.get("/console/jobs", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    answer = client.get("/console/jobs", headers={"Authorization": "Bearer t0ken-abc"})
    assert answer.status_code == 200 and "<table" in answer.text
    job = new_id()
    missing = client.get(f"/console/jobs/{job}", headers={"Authorization": "Bearer t0ken-abc"})
    assert missing.status_code == 404 and job in missing.text
    bad = client.get("/console/jobs/not-a-job", headers={"Authorization": "Bearer t0ken-abc"})
    assert bad.status_code == 400

    open_config = ConfigApiSettings(**settings.model_dump())
    loopback = TestClient(create_app(open_config, store, None), base_url="http://127.0.0.1:5000")
    foreign = loopback.post(
        "/console/dead-letters/parser/replay",
        data={},
        headers={"Origin": "https://attacker.example"},
    )
    assert foreign.status_code == 403
    assert JobStore(store).list_jobs() == []
