"""The FastAPI application: routers, authentication and error answers.

Every error is a JSON body. Under ``/api/v1`` it is ``{"error", "status", "message"}``;
under the Clara paths ``/api/config`` it is a Kubernetes ``Status`` and, as Clara
documents, 400 stands for "exists already or invalid" (409, 422 and 428 become 400 there).
Unexpected failures are logged and answered 500 without details; an unreachable store or
broker is 503.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.config_api import clara, console, quarantine_routes, retention_routes, routes
from services.config_api.console_session import ConsoleSessions
from services.config_api.deps import caller
from services.config_api.guard import ApiGuard
from services.config_api.models import Health
from services.config_api.repository import ApiError, ConfigRepository
from services.config_api.security import TokenChecker, parse_identifier_readers, parse_tokens
from services.config_api.settings import config_api_settings
from shared.broker import Broker
from shared.config import SeriesflowConfig, load_config
from shared.errors import (
    InvalidIdentifierError,
    InvalidInputError,
    RulesError,
    SeriesflowError,
    TransientError,
)
from shared.events import ConfigChanged, Envelope, event_id, new_id
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.pipelines import PipelineRegistry
from shared.settings import ServiceSettings
from shared.store import ObjectNotFoundError, ObjectStore

PRODUCER = "config-api"
log = get_logger("config_api")
_CLARA_REASONS = {400: "Invalid", 401: "Unauthorized", 404: "NotFound", 503: "ServiceUnavailable"}


def _publisher(broker: Broker) -> Any:
    lock = threading.Lock()  # pika connections are not thread-safe

    def publish(body: ConfigChanged) -> None:
        change = new_id()
        envelope = Envelope.wrap(
            body, job_id=change, producer=PRODUCER, event_id=event_id("config", change)
        )
        with lock:
            try:
                broker.publish(envelope)
            except TransientError:  # an idle connection may have been closed: once more
                broker.close()
                broker.publish(envelope)

    return publish


def create_app(
    settings: ServiceSettings,
    store: ObjectStore,
    broker: Broker | None,
    static: SeriesflowConfig | None = None,
) -> FastAPI:
    """The config API on ``store`` (bucket ready) and ``broker`` (None: no config.changed)."""
    config = config_api_settings(settings)
    tokens = parse_tokens(config.api_token, config.api_tokens)
    if static is None:
        static = load_config(config.config)
    app = FastAPI(
        title="seriesflow config API",
        version="1",
        description=(
            "AE titles, sources, destinations and pipelines of a running seriesflow, "
            "Clara DICOM Adapter-compatible under /api/config, seriesflow's own under "
            "/api/v1; jobs. See docs/config-api.md."
        ),
    )
    app.state.store = store
    app.state.jobs = JobStore(store)
    app.state.tokens = TokenChecker(tokens)
    app.state.sessions = ConsoleSessions(config.api_console_session_seconds)
    app.state.identifier_readers = parse_identifier_readers(config.api_identifier_readers, tokens)
    app.state.echo_timeout = config.api_echo_timeout
    app.state.repository = ConfigRepository(
        store,
        static=static,
        file_pipelines=PipelineRegistry.load(config.pipelines),
        notify=None if broker is None else _publisher(broker),
    )

    @app.get("/health", response_model=Health, tags=["Health"], summary="No token needed")
    def health() -> Health:
        return Health(status="ok")

    secured = [Depends(caller)]
    quarantine_routes.install(app)  # before routes: /api/v1/{kind}/{name} would match
    app.include_router(clara.router, dependencies=secured)
    app.include_router(routes.router, dependencies=secured)
    retention_routes.install(app, config)
    console.install(app, config)  # the web console, /console (docs/console.md)
    _error_handlers(app)
    app.add_middleware(
        ApiGuard,
        tokens=app.state.tokens,
        sessions=app.state.sessions,
        max_body=config.api_max_body_bytes,
        answer=_answer,
    )
    return app


def _answer(request: Request, status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if request.url.path.startswith("/api/config"):
        if status in (409, 422, 428):
            status = 400
        reason = "AlreadyExists" if code == "conflict" else _CLARA_REASONS.get(status, "Failure")
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "metadata": {},
            "message": message,
            "reason": reason,
            "code": status,
        }
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(
        {"error": code, "status": status, "message": message},
        status_code=status,
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = " > ".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _answer(request, exc.status, exc.code, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        status = 400 if malformed else 422
        return _answer(
            request, status, "bad_request" if malformed else "invalid", _validation_message(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _answer(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(SeriesflowError)
    async def seriesflow_error(request: Request, exc: SeriesflowError) -> JSONResponse:
        if isinstance(exc, TransientError):
            log.warning("request failed (transient)", extra={"reason": exc.reason})
            return _answer(request, 503, "unavailable", exc.reason)
        if isinstance(exc, ObjectNotFoundError):
            return _answer(request, 404, "not_found", exc.reason)
        if isinstance(exc, InvalidIdentifierError):
            return _answer(request, 400, "bad_request", exc.reason)
        if isinstance(exc, InvalidInputError | RulesError):
            return _answer(request, 422, "invalid", exc.reason)
        log.error("request failed", extra={"reason": exc.reason, "error": type(exc).__name__})
        return _answer(request, 500, "internal", "internal error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"path": request.url.path})
        return _answer(request, 500, "internal", "internal error")
