"""The web console at ``/console``: server-rendered HTML pages, no JavaScript.

Pages: jobs (filter by state, called AE title, pipeline and time), one job (its timeline
across stages with durations and failure reasons, its series with previews and the
selections each fell into), dead letters per service with a replay button, queues, and
the live configuration (read-only). It is served by the config API behind the same guard
(services/config_api/guard.py): the same bearer tokens, and without tokens loopback
only, with a foreign ``Origin`` refused (so no other site can post the replay form).
With tokens, a person signs in at ``/console/login`` with a token and gets a signed
session cookie (services/config_api/console_session.py); ``/console/logout`` ends it.

Data comes from :class:`shared.jobstore.JobStore` and
:class:`shared.configstore.ConfigRepository` (the only owners of the object store), queue
figures and replay from :mod:`services.status` and :class:`shared.broker.Broker`.
See docs/console.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.config_api.console_pages import (
    Page,
    config_page,
    dead_letters_page,
    job_page,
    jobs_page,
    login_page,
    logout_page,
    message_page,
    queues_page,
)
from services.config_api.console_session import (
    CONSOLE,
    COOKIE,
    LOGIN,
    ConsoleSessions,
    safe_next,
)
from services.config_api.jobs import job_detail, job_id
from services.config_api.repository import ApiError, ConfigRepository
from services.config_api.security import TokenChecker
from services.config_api.settings import config_api_settings
from services.status import CONSUMING_SERVICES, queue_stats
from shared.broker import Broker, QueueStats
from shared.dicom.metadata import METADATA_FILE, SELECTED_IMAGES_FILE
from shared.errors import InvalidInputError, SeriesflowError, TransientError
from shared.jobstore import JobInfo, JobStore
from shared.logs import get_logger
from shared.settings import ServiceSettings
from shared.store import ObjectNotFoundError

log = get_logger("config_api")
router = APIRouter(prefix="/console", include_in_schema=False)
JOBS_SHOWN = 100
KINDS = ("ae-titles", "sources", "destinations", "pipelines")
_PREVIEW_NAME = re.compile(r"^[0-9A-Za-z.\-]{1,128}\.png$")


def install(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve the console on ``app``; ``settings`` reach RabbitMQ for queues and replay."""
    app.state.console_settings = settings
    app.state.console_secure_cookie = config_api_settings(settings).api_console_secure_cookie
    app.include_router(router)


def _html(page: Page, status: int = 200) -> HTMLResponse:
    return HTMLResponse(page.render(), status_code=status)


@contextmanager
def _broker(request: Request) -> Iterator[Broker]:
    settings: ServiceSettings = request.app.state.console_settings
    broker = Broker(settings, "console")
    try:
        broker.connect(attempts=2)
        yield broker
    finally:
        broker.close()


def _answering(build: Callable[[], Response]) -> Response:
    """``build()``, or an error page: 404 unknown, 400 malformed, 503 store/broker down."""
    try:
        return build()
    except ApiError as exc:
        title = {400: "Bad request", 404: "Not found"}.get(exc.status, "Not available")
        return _html(message_page(title, exc.reason), exc.status)
    except ObjectNotFoundError as exc:
        return _html(message_page("Not found", exc.reason), 404)
    except TransientError as exc:
        log.warning("console page failed (transient)", extra={"reason": exc.reason})
        return _html(message_page("Unavailable", exc.reason), 503)
    except SeriesflowError as exc:
        return _html(message_page("Error", exc.reason), 500)


@router.get("", response_class=HTMLResponse)
def console_home() -> Response:
    return RedirectResponse("/console/jobs", status_code=303)


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next_path: str = Query(default="", alias="next")) -> Response:
    tokens: TokenChecker = request.app.state.tokens
    return _no_store(_html(login_page(safe_next(next_path), tokens=tokens.enabled)))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the form's token like a bearer token; on success set the session cookie.

    The guard has capped this body at a few KiB before it is read here.
    """
    tokens: TokenChecker = request.app.state.tokens
    sessions: ConsoleSessions = request.app.state.sessions
    body = (await request.body()).decode("utf-8", "replace")
    try:
        form = parse_qs(body, max_num_fields=4)
    except ValueError:
        form = {}
    token = (form.get("token") or [""])[0].strip()
    target = safe_next((form.get("next") or [""])[0])
    if not tokens.enabled:
        return RedirectResponse(target, status_code=303)
    who = tokens.identify(f"Bearer {token}") if token else None
    if who is None:
        log.warning("console sign-in refused", extra={"peer": _peer(request)})
        page = login_page(target, "That is not a valid API token.")
        return _no_store(_html(page, 401))
    log.info("console sign-in", extra={"peer": _peer(request), "token_name": who})
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        sessions.issue(who),
        max_age=sessions.lifetime,
        path=CONSOLE,
        secure=request.url.scheme == "https" or bool(request.app.state.console_secure_cookie),
        httponly=True,
        samesite="strict",
    )
    return _no_store(response)


@router.get("/logout", response_class=HTMLResponse)
def logout_form(request: Request) -> Response:
    tokens: TokenChecker = request.app.state.tokens
    return _no_store(_html(logout_page(tokens.enabled)))


@router.post("/logout")
def logout(request: Request) -> Response:
    """Clear the session cookie (the signed value itself stays valid until it expires)."""
    sessions: ConsoleSessions = request.app.state.sessions
    who = sessions.verify(request.cookies.get(COOKIE))
    if who is not None:
        log.info("console sign-out", extra={"peer": _peer(request), "token_name": who})
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(COOKIE, path=CONSOLE, httponly=True, samesite="strict")
    return _no_store(response)


def _since(value: str) -> datetime | None:
    """A time filter: ``1h``/``30m``/``2d`` ago, or an ISO date/time (UTC if no zone)."""
    value = value.strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+)\s*([mhd])", value)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match[2]]
        return datetime.now(UTC) - timedelta(**{unit: int(match[1])})
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"since: {value!r} is not 30m, 2h, 1d or ISO") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _ae_title(jobs: JobStore, job: JobInfo) -> str:
    manifest = jobs.find_manifest(job.job_id)
    return manifest.called_ae_title if manifest is not None else ""


@router.get("/jobs", response_class=HTMLResponse)
def jobs_list(
    request: Request,
    state: str = Query(default=""),
    ae: str = Query(default=""),
    pipeline: str = Query(default=""),
    since: str = Query(default=""),
) -> Response:
    def build() -> Response:
        jobs: JobStore = request.app.state.jobs
        after = _since(since)
        rows = []
        for job in jobs.list_jobs(JOBS_SHOWN):
            if state and job.state != state:
                continue
            if pipeline and (job.pipeline or "") != pipeline:
                continue
            if after is not None and job.updated < after:
                continue
            called = _ae_title(jobs, job)
            if ae and called.strip().upper() != ae.strip().upper():
                continue
            rows.append((job, called))
        filters = {"state": state, "ae": ae, "pipeline": pipeline, "since": since}
        return _html(jobs_page(rows, filters))

    return _answering(build)


def _selections_by_key(jobs: JobStore, job: str) -> dict[str, list[str]]:
    try:
        selected = json.loads(jobs.output(job, SELECTED_IMAGES_FILE))
    except ObjectNotFoundError:
        return {}
    by_key: dict[str, list[str]] = {}
    if isinstance(selected, dict):
        for selection, images in selected.items():
            for key in images if isinstance(images, dict) else ():
                by_key.setdefault(str(key), []).append(str(selection))
    return by_key


def _series(jobs: JobStore, job: str) -> list[dict[str, Any]] | None:
    """The job's series from dicom-metadata.json; None before the parser wrote it."""
    try:
        metadata = json.loads(jobs.output(job, METADATA_FILE))
    except ObjectNotFoundError:
        return None
    except ValueError as exc:
        raise InvalidInputError(f"job {job}: {METADATA_FILE} is damaged") from exc
    return [se for st in metadata.get("studies", []) for se in st.get("series", [])]


@router.get("/jobs/{job}", response_class=HTMLResponse)
def job_view(request: Request, job: str) -> Response:
    def build() -> Response:
        jobs: JobStore = request.app.state.jobs
        detail = job_detail(jobs, job)
        manifest = jobs.find_manifest(detail.jobId)
        return _html(
            job_page(
                detail,
                manifest,
                _series(jobs, detail.jobId),
                _selections_by_key(jobs, detail.jobId),
            )
        )

    return _answering(build)


@router.get("/jobs/{job}/previews/{name}")
def preview(request: Request, job: str, name: str) -> Response:
    def build() -> Response:
        if not _PREVIEW_NAME.match(name):
            raise ApiError(400, "bad_request", "not a preview name")
        jobs: JobStore = request.app.state.jobs
        data = jobs.output(job_id(job), name)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    return _answering(build)


def _stats(request: Request) -> list[QueueStats]:
    with _broker(request) as broker:
        return queue_stats(broker)


@router.get("/queues", response_class=HTMLResponse)
def queues(request: Request) -> Response:
    return _answering(lambda: _html(queues_page(_stats(request))))


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters(
    request: Request, replayed: int | None = None, service: str = Query(default="")
) -> Response:
    def build() -> Response:
        jobs: JobStore = request.app.state.jobs
        failed = [j for j in jobs.list_jobs(JOBS_SHOWN) if j.state == "failed"]
        reasons = {j.job_id: job_detail(jobs, j.job_id).errors for j in failed}
        notice = None
        if replayed is not None and service in CONSUMING_SERVICES:
            notice = f"re-published {replayed} dead letter(s) of {service}"
        return _html(dead_letters_page(_stats(request), failed, reasons, notice))

    return _answering(build)


@router.post("/dead-letters/{service}/replay")
def replay(request: Request, service: str) -> Response:
    def build() -> Response:
        if service not in CONSUMING_SERVICES:
            raise ApiError(400, "bad_request", f"no such service: {service}")
        with _broker(request) as broker:
            count = broker.replay_dead_letters(service)
        log.info(
            "dead letters replayed from the console", extra={"service": service, "count": count}
        )
        query = urlencode({"replayed": count, "service": service})
        return RedirectResponse(f"/console/dead-letters?{query}", status_code=303)

    return _answering(build)


@router.get("/config", response_class=HTMLResponse)
def config(request: Request) -> Response:
    def build() -> Response:
        repo: ConfigRepository = request.app.state.repository
        return _html(config_page({kind: repo.list_objects(kind) for kind in KINDS}))

    return _answering(build)
