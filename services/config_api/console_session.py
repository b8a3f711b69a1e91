"""The console's sign-in session: a signed cookie, and the same-origin rule that goes with it.

A person signs in at ``/console/login`` with an API token. The cookie then holds
``<token name>.<expiry>.<signature>``: the signature is an HMAC-SHA256 of the name and the
expiry (Unix seconds) under a random key made when the API starts, so the cookie never
holds the token, cannot be forged or extended, and every session ends when the process
restarts. The guard (services/config_api/guard.py) accepts it under ``/console`` only, and
for a state-changing request made with it also requires a same-origin ``Origin`` (or,
without one, ``Referer``), so another site cannot use it (CSRF). See docs/console.md.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from hashlib import sha256
from urllib.parse import urlsplit

COOKIE = "seriesflow_console"
CONSOLE = "/console"
LOGIN = "/console/login"
LOGOUT = "/console/logout"
SIGN_IN_PATHS = frozenset({LOGIN, LOGOUT})
LOGIN_MAX_BODY = 4096  # a token and a return path, form-encoded
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_LIFETIME = 8 * 3600  # seconds (SERIESFLOW_API_CONSOLE_SESSION_SECONDS)


def is_console(path: str) -> bool:
    return path == CONSOLE or path.startswith(CONSOLE + "/")


class ConsoleSessions:
    """Issues and checks session cookie values; the key lives as long as this object."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self._key = secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, token_name: str, now: float | None = None) -> str:
        expiry = int(now if now is not None else time.time()) + self.lifetime
        payload = f"{token_name}.{expiry}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, value: str | None, now: float | None = None) -> str | None:
        """The token name a valid, unexpired cookie value was issued for, else None."""
        if not value or len(value) > 256:
            return None
        payload, dot, signature = value.rpartition(".")
        name, dot2, expiry = payload.rpartition(".")
        if not dot or not dot2 or not name or not expiry.isdigit():
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        if int(expiry) <= (now if now is not None else time.time()):
            return None
        return name


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """True when ``Origin`` (or, without it, ``Referer``) names the host the request came to.

    The host and port are compared with the ``Host`` header; the scheme must be http or
    https (a proxy may end TLS in front of the API, so the request's own scheme may differ).
    Neither header, ``Origin: null``, or another host: False.
    """
    source = origin or referer
    if not source or not host:
        return False
    try:
        parts = urlsplit(source.strip())
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or parts.username or parts.password:
        return False
    return parts.netloc.lower() == host.strip().lower()


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a console path, else the jobs page (no open redirect)."""
    sign_in = value is not None and value.startswith((LOGIN, LOGOUT))
    if value and is_console(value) and "//" not in value and "\\" not in value and not sign_in:
        return value
    return CONSOLE + "/jobs"
