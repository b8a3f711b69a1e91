"""Token parsing, token checks and the loopback rule of the config API."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from services.config_api.security import (
    ANONYMOUS,
    TokenChecker,
    check_bind,
    is_loopback,
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
