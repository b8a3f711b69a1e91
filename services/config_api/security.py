"""Bearer tokens and the loopback-only rule.

``SERIESFLOW_API_TOKEN`` is one token, named ``default`` in the audit log.
``SERIESFLOW_API_TOKENS`` is several named ones: ``name1:token1,name2:token2`` (a name is
letters, digits, ``_.-``; a token is everything after the first ``:`` up to the next
``,``, without whitespace). Both may be set. When any token is configured, every endpoint
but ``/health`` needs ``Authorization: Bearer <token>``; tokens are compared in constant
time and never logged. With none configured, the API may only listen on loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass

from pydantic import SecretStr

from shared.errors import InvalidInputError

ANONYMOUS = "anonymous-loopback"
DEFAULT_TOKEN_NAME = "default"
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no whitespace


@dataclass(frozen=True)
class NamedToken:
    name: str
    token: SecretStr


def parse_tokens(single: SecretStr | None, several: SecretStr | None) -> list[NamedToken]:
    """The configured tokens; a malformed value raises InvalidInputError (without the token)."""
    tokens: list[NamedToken] = []
    if single is not None and single.get_secret_value().strip():
        value = single.get_secret_value().strip()
        if not _TOKEN.match(value):
            raise InvalidInputError("SERIESFLOW_API_TOKEN must be printable ASCII, no spaces")
        tokens.append(NamedToken(DEFAULT_TOKEN_NAME, SecretStr(value)))
    if several is not None and several.get_secret_value().strip():
        for position, entry in enumerate(several.get_secret_value().split(","), start=1):
            entry = entry.strip()
            name, colon, value = entry.partition(":")
            if not colon or not _TOKEN_NAME.match(name) or not _TOKEN.match(value):
                raise InvalidInputError(
                    f"SERIESFLOW_API_TOKENS entry {position} must be 'name:token' (name: "
                    "letters, digits, _.-; token: printable, no spaces or commas)"
                )
            tokens.append(NamedToken(name, SecretStr(value)))
    names = [t.name for t in tokens]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInputError(f"API token name(s) given twice: {', '.join(duplicates)}")
    values = [t.token.get_secret_value() for t in tokens]
    if len(set(values)) != len(values):
        raise InvalidInputError("two API tokens have the same value")
    return tokens


class TokenChecker:
    """Who a bearer token belongs to, in constant time over every configured token."""

    def __init__(self, tokens: list[NamedToken]) -> None:
        self._tokens = [(t.name, t.token.get_secret_value().encode()) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, authorization: str | None) -> str | None:
        """The token's name, ``anonymous-loopback`` when no token is configured, else None."""
        if not self._tokens:
            return ANONYMOUS
        if not authorization:
            return None
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = presented.strip().encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, token in self._tokens:  # no early exit: time does not depend on which
            if hmac.compare_digest(given, token):
                found = name
        return found


def parse_identifier_readers(value: str, tokens: list[NamedToken]) -> frozenset[str]:
    """Who may ask for patient identifiers: configured token names, or ``anonymous-loopback``.

    An unknown name raises InvalidInputError, so a typo does not silently grant nothing
    (or, worse, something to a token added later under that name).
    """
    names = [n.strip() for n in value.split(",") if n.strip()]
    known = {t.name for t in tokens} | ({ANONYMOUS} if not tokens else set())
    unknown = sorted(set(names) - known)
    if unknown:
        raise InvalidInputError(
            "SERIESFLOW_API_IDENTIFIER_READERS names no configured token: "
            f"{', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})"
        )
    return frozenset(names)


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port: ``[::1]:5000`` -> ``::1``."""
    host = host_header.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def is_loopback_origin(origin: str) -> bool:
    """True for ``http(s)://`` origins whose host is a loopback name (``null`` is not)."""
    scheme, sep, rest = origin.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or "/" in rest or "@" in rest:
        return False
    return is_loopback(host_name(rest))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: list[NamedToken]) -> None:
    """Refuse to serve beyond loopback without a token."""
    if not tokens and not is_loopback(host):
        raise InvalidInputError(
            f"refusing to listen on {host}: no API token is configured, so the config API "
            "serves loopback only (set SERIESFLOW_API_TOKEN or SERIESFLOW_API_TOKENS, or "
            "listen on 127.0.0.1)"
        )
