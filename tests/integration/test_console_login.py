"""Signing in to the console with a token, against a real uvicorn with tokens configured
(SeaweedFS store, RabbitMQ): the session cookie, what it opens and what it does not, the
same-origin rule for forms sent with it, sign-out, and the form in headless Chromium.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.config_api.console_session import COOKIE, ConsoleSessions
from services.config_api.main import ConfigApiService
from services.config_api.settings import ConfigApiSettings
from shared.broker import Broker
from shared.settings import ServiceSettings

from .infra import free_port, wait_for_port
from .test_console import CHROMIUM, Chromium

TOKEN = "console-t0ken-9f2c"
OTHER = "second-t0ken-77aa"


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[str]:
    port = free_port()
    config = ConfigApiSettings(
        **{
            **settings.model_dump(),
            "host": "127.0.0.1",
            "port": port,
            "api_tokens": SecretStr(f"alice:{TOKEN},bob:{OTHER}"),
        }
    )
    with Broker(settings, "test") as broker:  # the parser's queues, as a running stack has
        broker.connect(attempts=3)
        broker.declare_service_queue("parser", [])
    with ConfigApiService(config):
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"


def _sign_in(client: httpx.Client, token: str) -> httpx.Response:
    return client.post(
        "/console/login",
        data={"token": token, "next": "/console/queues"},
        headers={"Origin": str(client.base_url).rstrip("/")},
    )


def test_sign_in_cookie_csrf_and_sign_out(api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with httpx.Client(base_url=api, timeout=30) as client:
        answer = client.get("/console/jobs?state=failed")
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/login?next=")
        form = client.get(answer.headers["location"])
        assert form.status_code == 200 and "name='token'" in form.text
        assert client.get("/console").status_code == 303

        wrong = _sign_in(client, "not-the-token")
        assert wrong.status_code == 401 and "not a valid API token" in wrong.text
        assert COOKIE not in wrong.headers.get("set-cookie", "") and COOKIE not in client.cookies

        right = _sign_in(client, TOKEN)
        assert right.status_code == 303 and right.headers["location"] == "/console/queues"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Path=/console" in cookie and "Max-Age=28800" in cookie
        assert "Secure" not in cookie  # plain http, no setting asking for it
        value = client.cookies[COOKIE]
        assert TOKEN not in value and value.startswith("alice.")

        jobs = client.get("/console/jobs")
        assert jobs.status_code == 200 and "0 job(s)" in jobs.text
        assert client.get("/console/queues").status_code == 200
        assert client.get("/console/config").status_code == 200

        # The cookie does not open the API, even when sent there on purpose.
        headers = {"Cookie": f"{COOKIE}={value}"}
        assert client.get("/api/v1/destinations", headers=headers).status_code == 401
        assert client.get("/api/config/ae-titles", headers=headers).status_code == 401
        # A forged or extended value is refused.
        _name, expiry, signature = value.split(".")
        for forged in (f"bob.{expiry}.{signature}", f"alice.{int(expiry) + 60}.{signature}"):
            probe = httpx.get(f"{api}/console/jobs", cookies={COOKIE: forged})
            assert probe.status_code == 303

        # Cross-site form posts with the cookie are refused before the broker is touched.
        replay = "/console/dead-letters/parser/replay"
        evil = client.post(replay, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403 and evil.json()["error"] == "origin_not_allowed"
        referer = client.post(replay, headers={"Referer": "https://evil.example/console/x"})
        assert referer.status_code == 403
        assert client.post(replay).status_code == 403  # neither header
        same = client.post(replay, headers={"Origin": api})
        assert same.status_code == 303, same.text
        assert same.headers["location"].startswith("/console/dead-letters?replayed=0")
        by_referer = client.post(replay, headers={"Referer": f"{api}/console/dead-letters"})
        assert by_referer.status_code == 303
        # Signing in (or out) from another site is refused too.
        foreign_login = client.post(
            "/console/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
        )
        assert foreign_login.status_code == 403

        out = client.post("/console/logout", headers={"Origin": api})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert (
            f'{COOKIE}=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
        )
        assert COOKIE not in client.cookies
        assert client.get("/console/jobs").status_code == 303

    # Without credentials a POST is redirected too; bearer clients work as before.
    assert httpx.post(f"{api}/console/dead-letters/parser/replay").status_code == 303
    bearer = {"Authorization": f"Bearer {OTHER}"}
    assert httpx.get(f"{api}/console/jobs", headers=bearer).status_code == 200
    bad = httpx.get(f"{api}/console/jobs", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert httpx.get(f"{api}/api/v1/destinations", headers=bearer).status_code == 200

    # A large "login form" is refused unread.
    big = httpx.post(
        f"{api}/console/login",
        content=b"token=" + b"x" * 10_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413

    logged = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records)
    assert TOKEN not in logged and "not-the-token" not in logged
    signed_in = [r for r in caplog.records if r.getMessage() == "console sign-in"]
    assert signed_in and signed_in[0].__dict__["token_name"] == "alice"
    assert signed_in[0].__dict__["peer"] == "127.0.0.1"
    refused = [r for r in caplog.records if r.getMessage() == "console sign-in refused"]
    assert refused and refused[0].__dict__["peer"] == "127.0.0.1"


def test_sessions_expire_and_do_not_survive_a_restart() -> None:
    sessions = ConsoleSessions(60)
    value = sessions.issue("alice", now=1000)
    assert sessions.verify(value, now=1059) == "alice"
    assert sessions.verify(value, now=1060) is None
    assert ConsoleSessions(60).verify(value, now=1000) is None  # another process's key
    assert sessions.verify(value + "x", now=1000) is None
    assert sessions.verify("alice.99999999999", now=1000) is None


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_sign_in_through_the_form_in_chromium(api: str, tmp_path: Path) -> None:
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        browser.call("Page.navigate", browser.session, url=f"{api}/console/jobs")
        browser.wait_for(
            "location.pathname === '/console/login' && document.readyState === 'complete'"
        )
        browser.evaluate(f"document.getElementById('token').value = 'wrong-{TOKEN}'")
        browser.evaluate("document.getElementById('sign-in').click()")
        browser.wait_for("!!document.getElementById('problem')")
        assert "not a valid API token" in browser.evaluate("document.body.innerText")
        assert browser.evaluate("document.cookie") == ""

        browser.evaluate(f"document.getElementById('token').value = {TOKEN!r}")
        browser.evaluate("document.getElementById('sign-in').click()")
        browser.wait_for(
            "location.pathname === '/console/jobs' && document.readyState === 'complete'"
        )
        text = browser.evaluate("document.body.innerText")
        assert "0 job(s)" in text and "Sign out" in text
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: not visible to scripts
        browser.screenshot(tmp_path / "signed-in.png")

        browser.call("Page.navigate", browser.session, url=f"{api}/console/logout")
        browser.wait_for("!!document.getElementById('sign-out')")
        browser.evaluate("document.getElementById('sign-out').click()")
        browser.wait_for(
            "location.pathname === '/console/login' && document.readyState === 'complete'"
        )
        browser.call("Page.navigate", browser.session, url=f"{api}/console/queues")
        browser.wait_for(  # signed out: the queues page sends the browser to the form
            "location.href.includes('/console/login?next=%2Fconsole%2Fqueues')"
            " && !!document.getElementById('token')"
        )
    finally:
        browser.close()
