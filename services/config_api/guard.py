"""The config API's front door: an ASGI middleware that decides before any body is read.

For every HTTP request, in this order:

1. **No API token configured** (the API then listens on loopback only): the ``Host`` header
   must name loopback (``localhost``, ``127.0.0.0/8``, ``[::1]``, any port), else 400
   ``host_not_allowed``. This stops DNS rebinding: a web page whose name was re-pointed at
   127.0.0.1 reaches the port, but its requests carry its own name as Host. An ``Origin``
   header, when present, must be a loopback origin too, else 403 ``origin_not_allowed``
   (a page on another site posting to http://127.0.0.1:5000 directly).
2. **Tokens configured**: every path but ``/health`` (``/docs`` and ``/openapi.json``
   included) needs ``Authorization: Bearer <token>``, else 401. Host is not checked: the
   API may be served under any name, and a browser never adds the token on its own.
3. **Body cap** (``SERIESFLOW_API_MAX_BODY_BYTES``, 1 MiB by default): a ``Content-Length``
   above it is answered 413 without reading the body; a body without a length
   (chunked) is read up to the cap and answered 413 beyond it.

Refusals are logged (warning) with the peer's address, the method and the path; never a
token nor a body. Answers have the API's error shape (a Kubernetes ``Status`` under
``/api/config``), built by the function the application passes in.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.config_api.security import (
    TokenChecker,
    host_name,
    is_loopback,
    is_loopback_origin,
)
from shared.logs import get_logger

log = get_logger("config_api")
OPEN_PATHS = frozenset({"/health"})
Answer = Callable[[Request, int, str, str], Response]
_SHOWN = 80  # characters of a refused Host or Origin header that reach the log


class RefusedError(Exception):
    """Why a request is answered before it reaches the application."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ApiGuard:
    """ASGI middleware: Host and Origin rule, token before body, body cap (module docstring)."""

    def __init__(
        self, app: ASGIApp, *, tokens: TokenChecker, max_body: int, answer: Answer
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.max_body = max_body
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no receive: nothing here can read the body
        try:
            self.check_caller(request)
            self.check_length(request)
            replay = await self.read_chunked(request, receive)
        except RefusedError as refusal:
            client = scope.get("client")
            log.warning(
                "request refused",
                extra={
                    "status": refusal.status,
                    "code": refusal.code,
                    "method": request.method,
                    "path": request.url.path[:200],
                    "peer": client[0] if client else None,
                },
            )
            response = self.answer(request, refusal.status, refusal.code, refusal.message)
            await response(scope, receive, send)
            return
        await self.app(scope, replay or receive, send)

    def check_caller(self, request: Request) -> None:
        headers = request.headers
        if not self.tokens.enabled:
            host = headers.get("host")
            if host is None or not is_loopback(host_name(host)):
                shown = "none" if host is None else repr(host[:_SHOWN])
                raise RefusedError(
                    400,
                    "host_not_allowed",
                    f"Host {shown} is not a loopback name: without an API token the config "
                    "API answers only to localhost, 127.0.0.1 and [::1] (set "
                    "SERIESFLOW_API_TOKEN to serve other names)",
                )
            origin = headers.get("origin")
            if origin is not None and not is_loopback_origin(origin):
                raise RefusedError(
                    403,
                    "origin_not_allowed",
                    f"requests from web pages of origin {origin[:_SHOWN]!r} are refused "
                    "without an API token",
                )
            return
        if request.url.path in OPEN_PATHS:
            return
        if self.tokens.identify(headers.get("authorization")) is None:
            raise RefusedError(401, "unauthorized", "a valid bearer token is required")

    def check_length(self, request: Request) -> None:
        value = request.headers.get("content-length")
        if value is None:
            return
        if not value.strip().isdigit():
            raise RefusedError(400, "bad_request", "Content-Length is not a number")
        if int(value) > self.max_body:
            raise RefusedError(413, "too_large", self._too_large())

    async def read_chunked(self, request: Request, receive: Receive) -> Receive | None:
        """A body without Content-Length, read up to the cap; a receive that replays it.

        None when the request declares its length (h11 holds it to that length, and
        :meth:`check_length` has capped it) or has no body.
        """
        if "content-length" in request.headers or "transfer-encoding" not in request.headers:
            return None
        chunks: list[bytes] = []
        size = 0
        ending: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                ending = message  # the client went away: let the application see it
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RefusedError(413, "too_large", self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        pending: list[Message] = [
            ending or {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]

        async def replay() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        return replay

    def _too_large(self) -> str:
        return (
            f"the request body is larger than {self.max_body} bytes (SERIESFLOW_API_MAX_BODY_BYTES)"
        )
