"""Patient identifiers in answers: withheld unless the caller asks and may.

An endpoint whose answer can hold patient identifiers (``/api/v1/rules/explain``) takes
``?identifiers=true`` through :func:`reveal_identifiers`. The caller must be named in
``SERIESFLOW_API_IDENTIFIER_READERS`` (a token name, or ``anonymous-loopback`` for the
tokenless loopback caller); otherwise the request is refused with 403, never answered
with the identifiers. Each answer that reveals them is logged with who asked.
"""

from __future__ import annotations

from fastapi import Depends, Query, Request

from services.config_api.deps import caller
from services.config_api.repository import ApiError
from shared.logs import get_logger

log = get_logger("config_api")
IDENTIFIERS = Query(
    default=False,
    description=(
        "Include patient identifiers (names, IDs, dates, ...); only for callers named in "
        "SERIESFLOW_API_IDENTIFIER_READERS, 403 for others"
    ),
)


def reveal_identifiers(
    request: Request, identifiers: bool = IDENTIFIERS, who: str = Depends(caller)
) -> bool:
    """True when the answer may hold patient identifiers; 403 if asked for and not allowed."""
    if not identifiers:
        return False
    readers: frozenset[str] = request.app.state.identifier_readers
    if who not in readers:
        raise ApiError(
            403,
            "forbidden",
            f"{who} may not read patient identifiers (SERIESFLOW_API_IDENTIFIER_READERS)",
        )
    log.info("patient identifiers revealed", extra={"who": who, "path": request.url.path})
    return True
