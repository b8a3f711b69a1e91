"""Token parsing, token checks and the loopback rule of the config API."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from services.config_api.guard import ApiGuard
from services.config_api.security import (
    ANONYMOUS,
    NamedToken,
    TokenChecker,
    check_bind,
    host_name,
    is_loopback,
    is_loopback_origin,
    parse_identifier_readers,
    parse_tokens,
)
from services.config_api.settings import ConfigApiSettings
from shared.errors import InvalidInputError


def test_single_and_named_tokens() -> None:
    tokens = parse_tokens(SecretStr("s3cret-one"), SecretStr(" alice:tok-a , bob:tok:b "))
    assert [t.name for t in tokens] == ["default", "alice", "bob"]
    assert tokens[2].token.get_secret_value() == "tok:b"  # split on the first colon only
    assert "tok-a" not in repr(tokens)
    assert parse_tokens(None, None) == []
    assert parse_tokens(SecretStr("  "), SecretStr("")) == []


@pytest.mark.parametrize(
    "several",
    [
        "aliceSeCrEt",
        "alice:",
        ":SeCrEt",
        "al ice:SeCrEt",
        "alice:Se CrEt",
        "alice:SeCrEt1,alice:SeCrEt2",
        "a:SeCrEt,b:SeCrEt",
        "a:SeCrEt,,",
    ],
)
def test_malformed_token_lists_are_refused_without_echoing_them(several: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_tokens(None, SecretStr(several))
    assert "SeCrEt" not in caught.value.reason
    assert "CrEt" not in caught.value.reason


def test_identify() -> None:
    checker = TokenChecker(parse_tokens(SecretStr("one-token"), SecretStr("ci:ci-token")))
    assert checker.enabled
    assert checker.identify("Bearer one-token") == "default"
    assert checker.identify("bearer ci-token") == "ci"
    assert checker.identify("Bearer  ci-token ") == "ci"
    for wrong in (None, "", "Bearer", "Bearer ci-toke", "Bearer ci-token2", "Basic ci-token"):
        assert checker.identify(wrong) is None
    assert checker.identify("Bearer \udcff") is None


def test_no_token_means_anonymous_loopback() -> None:
    checker = TokenChecker([])
    assert not checker.enabled
    assert checker.identify(None) == ANONYMOUS


def test_loopback() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.org", "", "localhost.example.org"):
        assert not is_loopback(host), host


def test_check_bind() -> None:
    check_bind("127.0.0.1", [])
    check_bind("0.0.0.0", parse_tokens(SecretStr("t"), None))
    with pytest.raises(InvalidInputError, match="no API token"):
        check_bind("0.0.0.0", [])


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERIESFLOW_API_HOST", "0.0.0.0")
    monkeypatch.setenv("SERIESFLOW_API_PORT", "8080")
    monkeypatch.setenv("SERIESFLOW_API_TOKENS", "ops:very-secret")
    settings = ConfigApiSettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.api_tokens is not None
    assert "very-secret" not in repr(settings)
    assert "very-secret" not in str(settings.model_dump())
    monkeypatch.delenv("SERIESFLOW_API_HOST")
    monkeypatch.delenv("SERIESFLOW_API_PORT")
    assert (ConfigApiSettings().host, ConfigApiSettings().port) == ("127.0.0.1", 5000)


def test_tokens_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    checker = TokenChecker(parse_tokens(None, SecretStr("x:never-logged")))
    checker.identify("Bearer never-logged")
    checker.identify("Bearer wrong-one")
    assert "never-logged" not in caplog.text


# -- Host and Origin (DNS rebinding), identifier readers -------------------------------------


def test_host_name_drops_the_port() -> None:
    assert host_name("localhost:5000") == "localhost"
    assert host_name("[::1]:5000") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("evil.example:5000") == "evil.example"
    assert not is_loopback(host_name("localhost.evil.example:5000"))
    assert not is_loopback(host_name("127.0.0.1.nip.io"))


def test_loopback_origins() -> None:
    for origin in ("http://localhost:3000", "https://127.0.0.1", "http://[::1]:8080"):
        assert is_loopback_origin(origin), origin
    for origin in ("null", "http://evil.example", "file://", "http://localhost@evil.example"):
        assert not is_loopback_origin(origin), origin


def test_identifier_readers_must_be_configured_token_names() -> None:
    tokens = parse_tokens(None, SecretStr("ops:a-token,ci:b-token"))
    assert parse_identifier_readers(" ops ", tokens) == {"ops"}
    assert parse_identifier_readers("", tokens) == frozenset()
    assert parse_identifier_readers("anonymous-loopback", []) == {ANONYMOUS}
    with pytest.raises(InvalidInputError, match="opz"):
        parse_identifier_readers("opz", tokens)
    with pytest.raises(InvalidInputError, match="anonymous-loopback"):
        parse_identifier_readers("anonymous-loopback", tokens)  # tokens set: nobody is anonymous


# -- the ASGI guard, in process (tests/integration/test_api_security.py runs uvicorn) --------


def guarded(tokens: list[NamedToken], max_body: int = 1024) -> TestClient:
    async def echo(request: Request) -> Response:
        return PlainTextResponse(str(len(await request.body())))

    def answer(request: Request, status: int, code: str, message: str) -> Response:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app.add_middleware(ApiGuard, tokens=TokenChecker(tokens), max_body=max_body, answer=answer)
    return TestClient(app, base_url="http://localhost:5000")


def test_guard_without_tokens_answers_loopback_host_names_only() -> None:
    client = guarded([])
    assert client.get("/x").status_code == 200
    assert client.get("/x", headers={"Host": "127.0.0.2:1"}).status_code == 200
    for host in ("evil.example", "evil.example:5000", "localhost.evil.example", "0.0.0.0"):
        refused = client.get("/x", headers={"Host": host})
        assert (refused.status_code, refused.json()["error"]) == (400, "host_not_allowed"), host
    assert client.get("/health", headers={"Host": "evil.example"}).status_code == 400
    refused = client.post("/x", content=b"{}", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    allowed = client.post("/x", content=b"{}", headers={"Origin": "http://localhost:3000"})
    assert allowed.status_code == 200


def test_guard_with_tokens_checks_the_token_first_and_not_the_host() -> None:
    client = guarded(parse_tokens(SecretStr("the-token"), None))
    assert client.get("/health", headers={"Host": "api.example"}).status_code == 200
    for path in ("/docs", "/openapi.json", "/api/v1/ae-titles"):
        assert client.get(path).status_code == 401, path
    auth = {"Authorization": "Bearer the-token", "Host": "api.example"}
    assert client.get("/openapi.json", headers=auth).status_code == 200
    # Without a token, an oversized body is answered 401, not 413: the token comes first.
    assert client.post("/x", content=b"x" * 5000).status_code == 401


def test_guard_caps_bodies_with_and_without_a_length() -> None:
    client = guarded([], max_body=1024)
    assert client.post("/x", content=b"x" * 1024).text == "1024"
    too_large = client.post("/x", content=b"x" * 1025)
    assert too_large.status_code == 413
    assert "SERIESFLOW_API_MAX_BODY_BYTES" in too_large.json()["message"]

    def chunks(count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield b"y" * 300

    assert client.post("/x", content=chunks(3)).text == "900"
    assert client.post("/x", content=chunks(4)).status_code == 413
    bad = client.post("/x", content=b"{}", headers={"Content-Length": "two"})
    assert bad.status_code in (400, 413)  # refused either way, never read as a length


def test_body_cap_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConfigApiSettings().api_max_body_bytes == 1024 * 1024
    monkeypatch.setenv("SERIESFLOW_API_MAX_BODY_BYTES", "4096")
    assert ConfigApiSettings().api_max_body_bytes == 4096
