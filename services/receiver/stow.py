"""DICOMweb STOW-RS (PS3.18 10.5): a second way in, beside C-STORE.

``POST /dicomweb/{AE title}/studies`` and ``POST /dicomweb/{AE title}/studies/{Study
Instance UID}`` take ``multipart/related; type="application/dicom"``: one DICOM file
(PS3.10) per part. The AE title is one of ours (``dicom > scp > ae-titles``): it gives the
pipeline, the grouping, the ignored SOP classes and the duplicates policy, exactly as for a
C-STORE to it.

One request is handled like one association from the calling AE title ``STOW-RS``: each
instance goes through :func:`services.receiver.handlers.store_instance` (the same checks,
the same store, the same C-STORE status), and when every part is done the request is
"released" (:meth:`JobService.association_released`), so its instances form a job as an
association's would (one per request, or per study after its quiet period with
``grouping: study``). The response is sent only after each stored instance is in the
object store. Its per-instance statuses: ReferencedSOPSequence for stored instances,
FailedSOPSequence with the C-STORE status as FailureReason for the others; HTTP 200 (all
stored), 202 (some), 409 (none); each failure's reason also as a ``Warning: 299`` header.

STOW-RS listens on ``SERIESFLOW_STOW_HOST`` (127.0.0.1) : ``SERIESFLOW_STOW_PORT`` (0: off).
Tokens are the config API's (``SERIESFLOW_API_TOKEN(S)``, :mod:`shared.tokens`); with
none, STOW-RS serves loopback only. A body larger than ``SERIESFLOW_STOW_MAX_BYTES`` is
answered 413 without being read (by Content-Length) or as soon as it passes the limit.
At most ``SERIESFLOW_STOW_MAX_REQUESTS`` requests are handled at once, so the memory their
bodies take is bounded too: one more is answered 503 with ``Retry-After``, unread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from services.receiver import statuses
from services.receiver.association import OpenAssociation, new_association_id
from services.receiver.encoding import STUDY_INSTANCE_UID, EncodingError, check_encoding
from services.receiver.handlers import ReceiverContext, store_instance
from services.receiver.settings import ReceiverSettings
from services.receiver.stow_parts import (
    DICOM_JSON,
    Outcome,
    PartError,
    RequestError,
    boundary_of,
    http_status,
    read_instance,
    response,
    split_parts,
)
from shared.errors import InvalidInputError
from shared.logs import get_logger
from shared.tokens import TokenChecker, parse_tokens

CALLING_AE_TITLE = "STOW-RS"
"""The calling AE title of a STOW-RS request's "association" (in its job's manifest)."""
_PATH = re.compile(r"^/dicomweb/([^/]{1,16})/studies(?:/([0-9.]{1,64}))?/?$")
_MAX_WARNINGS = 20
RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a 503 answered because SERIESFLOW_STOW_MAX_REQUESTS are in progress."""

log = get_logger("receiver.stow")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class StowApp:
    """The ASGI application."""

    def __init__(self, settings: ReceiverSettings, context: ReceiverContext) -> None:
        self.settings = settings
        self.context = context
        self.tokens = TokenChecker(parse_tokens(settings.api_token, settings.api_tokens))
        self.in_progress = 0
        """Requests whose body is being read or stored (one event loop: no lock needed)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._handle(scope, receive, send)
        except RequestError as exc:
            client = scope.get("client") or ("", 0)
            log.warning(
                "STOW-RS request refused",
                extra={"status": exc.status, "reason": exc.reason, "peer": str(client[0])},
            )
            await _answer_error(send, exc.status, exc.reason)
        except Exception as exc:
            log.exception(
                "STOW-RS request failed unexpectedly", extra={"error": type(exc).__name__}
            )
            await _answer_error(send, 500, "internal error; see the receiver's log")

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.tokens.identify(headers.get("authorization")) is None:
            raise RequestError(401, "a valid 'Authorization: Bearer <token>' is required")
        match = _PATH.match(scope["path"])
        if match is None:
            raise RequestError(404, "not found; STOW-RS is POST /dicomweb/{AE title}/studies")
        if scope["method"] != "POST":
            raise RequestError(405, "only POST is served (STOW-RS)")
        ae_title, study = match.group(1), match.group(2) or ""
        if ae_title not in self.context.ae_titles:
            raise RequestError(404, f"{ae_title!r} is not one of our AE titles")
        boundary = boundary_of(headers.get("content-type"))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            raise RequestError(413, f"request body larger than {self._limit} bytes")
        if self.in_progress >= self.settings.stow_max_requests:
            raise RequestError(
                503,
                f"{self.in_progress} STOW-RS requests are in progress, the most handled at "
                f"once (SERIESFLOW_STOW_MAX_REQUESTS); send again later",
            )
        self.in_progress += 1
        try:
            body = await self._body(receive)
            client = scope.get("client") or ("", 0)
            outcomes = await asyncio.to_thread(
                self.store, ae_title, study, split_parts(body, boundary), str(client[0])
            )
            del body  # its memory goes with its slot
        finally:
            self.in_progress -= 1
        if not outcomes:
            raise RequestError(400, "the request holds no part")
        await _answer(send, http_status(outcomes), response(outcomes), _warnings(outcomes))

    @property
    def _limit(self) -> int:
        return self.settings.stow_max_bytes

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                raise RequestError(413, f"request body larger than {self._limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def store(self, ae_title: str, study: str, parts: list[Any], host: str) -> list[Outcome]:
        """Store each part as an instance of one "association"; then release it."""
        association = OpenAssociation(
            association_id=new_association_id(),
            called_ae_title=ae_title,
            calling_ae_title=CALLING_AE_TITLE,
            calling_host=host,
        )
        self.context.jobs.remember(association.association_id)
        started = time.monotonic()
        outcomes = [self._store_part(association, part, study) for part in parts]
        self.context.jobs.association_released(association)
        stored = sum(o.stored for o in outcomes)
        log.info(
            "STOW-RS request answered",
            extra={
                "association": association.association_id,
                "called_ae_title": ae_title,
                "peer": host,
                "instances": len(outcomes),
                "stored": stored,
                "failed": len(outcomes) - stored,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return outcomes

    def _store_part(self, association: OpenAssociation, part: Any, study: str) -> Outcome:
        extra = {"association": association.association_id}
        try:
            instance = read_instance(part)
        except PartError as exc:
            log.warning("instance refused", extra={**extra, "reason": str(exc)})
            return Outcome("", "", statuses.CANNOT_UNDERSTAND, str(exc))
        outcome = Outcome(instance.sop_class_uid, instance.sop_instance_uid, statuses.SUCCESS)
        if study and _study_of(instance.data_set, instance.transfer_syntax_uid) not in (
            study,
            None,
        ):
            reason = "the instance's StudyInstanceUID differs from the request path's"
            log.warning("instance refused", extra={**extra, "reason": reason})
            return _failed(outcome, statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, reason)
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = UID(instance.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(instance.sop_instance_uid)
        meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid)
        meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
        try:
            status = store_instance(
                self.context,
                association,
                instance.sop_class_uid,
                instance.sop_instance_uid,
                meta,
                lambda: instance.data_set,
                instance.transfer_syntax_uid,
            )
        except Exception as exc:
            log.exception("STOW-RS instance failed unexpectedly", extra=extra)
            return _failed(outcome, statuses.PROCESSING_FAILURE, type(exc).__name__)
        if status == statuses.SUCCESS:
            return outcome
        return _failed(outcome, status, f"C-STORE status 0x{status:04X} (see the receiver's log)")


def _failed(outcome: Outcome, status: int, reason: str) -> Outcome:
    return Outcome(outcome.sop_class_uid, outcome.sop_instance_uid, status, reason)


def _study_of(data_set: bytes, transfer_syntax_uid: str) -> str | None:
    """The data set's StudyInstanceUID; None when it cannot be read (checked later)."""
    try:
        return check_encoding(data_set, transfer_syntax_uid).get(STUDY_INSTANCE_UID)
    except EncodingError:
        return None


def _warnings(outcomes: list[Outcome]) -> list[str]:
    failed = [o for o in outcomes if not o.stored]
    warnings = [
        f'299 seriesflow "{o.sop_instance_uid or "part " + str(n)}: {o.reason or "failed"}"'
        for n, o in enumerate(failed[:_MAX_WARNINGS], start=1)
    ]
    return [w.replace("\r", " ").replace("\n", " ") for w in warnings]


async def _answer(send: Send, status: int, body: dict[str, Any], warnings: list[str]) -> None:
    encoded = json.dumps(body).encode()
    headers = [
        (b"content-type", DICOM_JSON.encode()),
        (b"content-length", str(len(encoded)).encode()),
    ]
    headers += [(b"warning", w.encode("latin-1", "replace")) for w in warnings]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": encoded})


async def _answer_error(send: Send, status: int, reason: str) -> None:
    encoded = json.dumps({"error": reason}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(encoded)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="seriesflow"'))
    if status == 503:
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    if status in (401, 413, 503):  # the body is not read
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": encoded})


class StowServer:
    """STOW-RS served by uvicorn in a thread of the receiver (``SERIESFLOW_STOW_PORT``)."""

    def __init__(self, settings: ReceiverSettings, context: ReceiverContext) -> None:
        self.settings = settings
        app = StowApp(settings, context)
        if not app.tokens.enabled and not _is_loopback(settings.stow_host):
            raise InvalidInputError(
                f"refusing to serve STOW-RS on {settings.stow_host}: no API token is "
                "configured (set SERIESFLOW_API_TOKEN or SERIESFLOW_API_TOKENS, or listen on "
                "127.0.0.1)"
            )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.stow_host,
                port=settings.stow_port,
                lifespan="off",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=max(int(settings.drain_seconds), 1),
            )
        )
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Listen; returns once the port is open (raises if it could not be)."""
        self._thread = threading.Thread(target=self._server.run, name="receiver-stow", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise InvalidInputError(
                    f"STOW-RS could not listen on {self.settings.stow_host}:"
                    f"{self.settings.stow_port}"
                )
            time.sleep(0.02)
        log.info(
            "STOW-RS listening",
            extra={"host": self.settings.stow_host, "port": self.settings.stow_port},
        )

    def stop(self) -> None:
        """Stop accepting; requests in progress finish (up to the drain time)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.settings.drain_seconds + 5)
