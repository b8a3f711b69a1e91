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
   Under ``/console`` only, the console's session cookie
   (:mod:`services.config_api.console_session`) stands for the token: without a token
   header or a valid cookie a console request is redirected (303) to ``/console/login``;
   a state-changing request (POST) made with the cookie must also carry a same-origin
   ``Origin`` (or ``Referer``), else 403 ``origin_not_allowed``. The sign-in and sign-out
   paths are open, but a POST to them from another origin is refused with 403.
3. **Body cap** (``SERIESFLOW_API_MAX_BODY_BYTES``, 1 MiB by default; 4 KiB for the
   sign-in and sign-out forms): a ``Content-Length`` above it is answered 413 without
   reading the body; a body without a length (chunked) is read up to the cap and answered
   413 beyond it.

Refusals are logged (warning) with the peer's address, the method and the path; never a
token nor a body. Answers have the API's error shape (a Kubernetes ``Status`` under
``/api/config``), built by the function the application passes in.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.config_api.console_session import (
    COOKIE,
    DEFAULT_LIFETIME,
    LOGIN,
    LOGIN_MAX_BODY,
    SAFE_METHODS,
    SIGN_IN_PATHS,
    ConsoleSessions,
    is_console,
    same_origin,
)
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

    def __init__(self, status: int, code: str, message: str, location: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.location = location  # a redirect (to the console's sign-in page) instead


class ApiGuard:
    """ASGI middleware: Host and Origin rule, token before body, body cap (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenChecker,
        sessions: ConsoleSessions | None = None,
        max_body: int,
        answer: Answer,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.sessions = sessions or ConsoleSessions(DEFAULT_LIFETIME)
        self.max_body = max_body
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no receive: nothing here can read the body
        cap = self.max_body
        if request.url.path in SIGN_IN_PATHS:
            cap = min(cap, LOGIN_MAX_BODY)
        try:
            self.check_caller(request)
            self.check_length(request, cap)
            replay = await self.read_chunked(request, receive, cap)
        except RefusedError as refusal:
            if refusal.location:
                redirect = RedirectResponse(refusal.location, status_code=303)
                await redirect(scope, receive, send)
                return
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
        if is_console(request.url.path) and "authorization" not in headers:
            self.check_console_session(request)
            return
        if self.tokens.identify(headers.get("authorization")) is None:
            raise RefusedError(401, "unauthorized", "a valid bearer token is required")

    def check_console_session(self, request: Request) -> None:
        """A console request without a token header: the sign-in pages, or the cookie."""
        headers = request.headers
        path = request.url.path
        from_here = same_origin(headers.get("origin"), headers.get("referer"), headers.get("host"))
        unsafe = request.method not in SAFE_METHODS
        if path in SIGN_IN_PATHS:
            if unsafe and ("origin" in headers or "referer" in headers) and not from_here:
                raise RefusedError(
                    403,
                    "origin_not_allowed",
                    "the sign-in and sign-out forms are accepted from the console's own pages only",
                )
            return
        if self.sessions.verify(request.cookies.get(COOKIE)) is None:
            back = path + (f"?{request.url.query}" if request.url.query else "")
            query = "" if unsafe else "?" + urlencode({"next": back})
            raise RefusedError(303, "sign_in_required", "sign in first", LOGIN + query)
        if unsafe and not from_here:
            raise RefusedError(
                403,
                "origin_not_allowed",
                "a console form sent with the session cookie must come from the console's "
                "own pages (a same-origin Origin or Referer header)",
            )

    def check_length(self, request: Request, cap: int) -> None:
        value = request.headers.get("content-length")
        if value is None:
            return
        if not value.strip().isdigit():
            raise RefusedError(400, "bad_request", "Content-Length is not a number")
        if int(value) > cap:
            raise RefusedError(413, "too_large", self._too_large(cap))

    async def read_chunked(self, request: Request, receive: Receive, cap: int) -> Receive | None:
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
            if size > cap:
                raise RefusedError(413, "too_large", self._too_large(cap))
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

    def _too_large(self, cap: int) -> str:
        if cap < self.max_body:
            return f"the sign-in form is larger than {cap} bytes"
        return f"the request body is larger than {cap} bytes (SERIESFLOW_API_MAX_BODY_BYTES)"
