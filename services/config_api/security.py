"""Bearer tokens and the loopback-only rule.

``SERIESFLOW_API_TOKEN`` is one token, named ``default`` in the audit log.
``SERIESFLOW_API_TOKENS`` is several named ones: ``name1:token1,name2:token2`` (a name is
letters, digits, ``_.-``; a token is everything after the first ``:`` up to the next
``,``, without whitespace). Both may be set. When any token is configured, every endpoint
but ``/health`` needs ``Authorization: Bearer <token>``; tokens are compared in constant
time and never logged. With none configured, the API may only listen on loopback.
"""

from __future__ import annotations

import ipaddress

from shared.errors import InvalidInputError
from shared.tokens import ANONYMOUS as ANONYMOUS
from shared.tokens import DEFAULT_TOKEN_NAME as DEFAULT_TOKEN_NAME
from shared.tokens import NamedToken as NamedToken
from shared.tokens import TokenChecker as TokenChecker
from shared.tokens import parse_tokens as parse_tokens


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
