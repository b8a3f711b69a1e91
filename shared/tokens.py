"""Bearer tokens: ``SERIESFLOW_API_TOKEN`` (one, named ``default``) and
``SERIESFLOW_API_TOKENS`` (``name1:token1,name2:token2``), parsed and checked in constant
time. Used by the config API (:mod:`services.config_api.security`) and the receiver's
STOW-RS endpoint (:mod:`services.receiver.stow`); tokens are never logged.
"""

from __future__ import annotations

import hmac
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
