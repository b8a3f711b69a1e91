"""The configuration the API manages, in the object store, with optimistic concurrency.

Layout (one JSON document per object, built by :func:`shared.keys.config`)::

    config/ae-titles/<name>.json      one of our AE titles   (spec as dicom > scp > ae-titles)
    config/sources/<name>.json        an allowed source      (spec as dicom > scp > sources)
    config/destinations/<name>.json   a DICOM destination    (spec as dicom > scu > destinations)
    config/pipelines/<name>.json      a pipeline definition  (spec as docs/pipelines.md)
    config/audit/<time>-<id>.json     one audit record per change

A document is ``{"kind", "name", "spec", "writeId", "createdAt", "updatedAt", "updatedBy"}``;
``spec`` uses the configuration file's (hyphenated) keys, so :mod:`services.config_api.live`
builds a :class:`SeriesflowConfig` from it directly.

Concurrency: an object's *revision* is the ETag of its stored document. ``writeId`` is fresh
for every write, so no two writes of an object share a revision (no ABA). Every write is a
conditional S3 request evaluated by the server: a create is ``PUT`` with
``If-None-Match: *``, an update is ``PUT`` with ``If-Match: <revision read>``, a delete with
a revision is ``DELETE`` with ``If-Match``. The server answers 412 when someone else wrote
first, which becomes 409 here: of two replicas updating from the same revision exactly
one wins and the other is told, so no change is lost silently. :meth:`check_conditional_writes`
verifies at start that the server honours these headers (AWS S3, MinIO and SeaweedFS do)
and refuses to run otherwise. Limits: the guarantee is per object. Checks that span
objects (an AE title used by two names, a deleted destination still routed to) read
other objects first and are not atomic with the write; two replicas racing on them can
both pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import urllib3
from minio.error import S3Error
from pydantic import BaseModel, ValidationError

from shared import keys
from shared.config import AETitleConfig, DestinationConfig, SeriesflowConfig, SourceConfig
from shared.errors import (
    InvalidIdentifierError,
    PermanentError,
    RulesError,
    SeriesflowError,
    TransientError,
)
from shared.events import ConfigChanged, new_id
from shared.identifiers import validate_name
from shared.logs import get_logger
from shared.pipelines import parse_pipeline
from shared.store import ObjectStore

log = get_logger("config_api")

Kind = Literal["ae-titles", "sources", "destinations", "pipelines"]
KINDS: tuple[Kind, ...] = ("ae-titles", "sources", "destinations", "pipelines")
AUDIT_KIND = "audit"
Action = Literal["created", "updated", "deleted"]


class ApiError(SeriesflowError):
    """An answer other than success: ``status`` is the HTTP status, ``code`` a short word."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code


def not_found(reason: str) -> ApiError:
    return ApiError(404, "not_found", reason)


def conflict(reason: str) -> ApiError:
    return ApiError(409, "conflict", reason)


def invalid(reason: str) -> ApiError:
    return ApiError(422, "invalid", reason)


@dataclass(frozen=True)
class StoredObject:
    kind: str
    name: str
    spec: dict[str, Any]
    revision: str
    created_at: str
    updated_at: str
    updated_by: str


class AuditRecord(BaseModel):
    """One configuration change: who, what, when, before and after."""

    id: str
    time: str
    who: str
    action: Action
    kind: str
    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    previous_revision: str | None
    revision: str | None


Notifier = Callable[[ConfigChanged], None]
Headers = dict[str, str | list[str] | tuple[str]]


def _now() -> datetime:
    return datetime.now(UTC)


def _etag(value: str | None) -> str:
    return (value or "").strip().removeprefix("W/").strip('"')


@contextmanager
def _s3(what: str) -> Iterator[None]:
    try:
        yield
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            raise not_found(f"{what}: not found") from exc
        if exc.code == "PreconditionFailed":
            raise conflict(f"{what}: changed by someone else since it was read") from exc
        if exc.code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
            raise TransientError(f"{what}: object store busy ({exc.code})") from exc
        raise PermanentError(f"{what}: object store refused ({exc.code})") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"{what}: object store unreachable ({type(exc).__name__})") from exc


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = " > ".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def check_name(name: str, kind: str) -> str:
    try:
        return validate_name(name, f"{kind.rstrip('s')} name")
    except InvalidIdentifierError as exc:
        raise invalid(exc.reason) from exc


def normalize_spec(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` validated and in its canonical form; ApiError 422 if it is not valid."""
    check_name(name, kind)
    model: type[BaseModel]
    try:
        if kind == "pipelines":
            return _pipeline_spec(name, spec)
        if kind == "ae-titles":
            model = AETitleConfig
        elif kind == "sources":
            model = SourceConfig
        elif kind == "destinations":
            model = DestinationConfig
            if spec.get("name", name) != name:
                raise invalid(f"destination name {spec.get('name')!r} differs from {name!r}")
            spec = {**spec, "name": name}
        else:
            raise not_found(f"no configuration kind {kind!r}")
        return model.model_validate(spec).model_dump(by_alias=True, mode="json")
    except ValidationError as exc:
        raise invalid(f"{kind.rstrip('s')} {name!r}: {_first_error(exc)}") from exc


def _pipeline_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    if "rules-file" in spec:
        raise invalid("a pipeline stored through the API must carry its rules inline ('rules')")
    if spec.get("name", name) != name:
        raise invalid(f"pipeline name {spec.get('name')!r} differs from {name!r}")
    spec = {**spec, "name": name}
    try:
        parse_pipeline(spec, f"pipeline {name!r}")
    except RulesError as exc:
        raise invalid(exc.reason) from exc
    except SeriesflowError as exc:
        raise invalid(exc.reason) from exc
    plain: dict[str, Any] = json.loads(json.dumps(spec))  # plain JSON, as stored
    return plain


class ConfigRepository:
    """AE titles, sources, destinations and pipelines in the object store.

    ``static`` is the configuration file (if any): its destinations count when a pipeline
    route is checked. ``notify`` is called after every change (publishes config.changed).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        static: SeriesflowConfig | None = None,
        notify: Notifier | None = None,
    ) -> None:
        self.store = store
        self.static = static or SeriesflowConfig()
        self.notify = notify

    # -- reading ------------------------------------------------------------------------

    def _read(self, kind: str, name: str) -> StoredObject:
        key = keys.config(kind, name)
        with _s3(f"{kind.rstrip('s')} {name!r}"):
            response = self.store.client.get_object(self.store.bucket, key)
            try:
                data = response.read()
                etag = _etag(response.headers.get("ETag"))
            finally:
                response.close()
                response.release_conn()
        document = json.loads(data)
        return StoredObject(
            kind=kind,
            name=str(document["name"]),
            spec=dict(document["spec"]),
            revision=etag,
            created_at=str(document.get("createdAt", "")),
            updated_at=str(document.get("updatedAt", "")),
            updated_by=str(document.get("updatedBy", "")),
        )

    def get(self, kind: str, name: str) -> StoredObject:
        _check_kind(kind)
        check_name(name, kind)
        return self._read(kind, name)

    def find(self, kind: str, name: str) -> StoredObject | None:
        try:
            return self.get(kind, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_objects(self, kind: str) -> list[StoredObject]:
        _check_kind(kind)
        prefix = f"config/{kind}/"
        items = []
        with _s3(f"list {kind}"):
            names = [k[len(prefix) : -len(".json")] for k in self.store.list(prefix)]
        for name in sorted(n for n in names if n):
            try:
                items.append(self._read(kind, name))
            except ApiError as exc:  # deleted between list and read
                if exc.status != 404:
                    raise
        return items

    # -- writing ------------------------------------------------------------------------

    def create(self, kind: str, name: str, spec: dict[str, Any], who: str) -> StoredObject:
        _check_kind(kind)
        spec = normalize_spec(kind, name, spec)
        self._check_references(kind, name, spec)
        if self.find(kind, name) is not None:
            raise conflict(f"{kind.rstrip('s')} {name!r} already exists")
        self._check_unique(kind, name, spec)
        now = _now().isoformat()
        try:
            stored = self._put(kind, name, spec, now, now, who, if_none_match=True)
        except ApiError as exc:
            if exc.status == 409:
                raise conflict(f"{kind.rstrip('s')} {name!r} already exists") from exc
            raise
        self._record(who, "created", kind, name, None, stored)
        return stored

    def update(
        self, kind: str, name: str, spec: dict[str, Any], revision: str | None, who: str
    ) -> StoredObject:
        _check_kind(kind)
        if not revision:
            raise ApiError(
                428,
                "precondition_required",
                "an update must give the revision it read (If-Match header or 'revision')",
            )
        spec = normalize_spec(kind, name, spec)
        current = self.get(kind, name)
        if _etag(revision) != current.revision:
            raise conflict(
                f"{kind.rstrip('s')} {name!r} is at revision {current.revision}, "
                f"not {_etag(revision)}: read it again and retry"
            )
        self._check_references(kind, name, spec)
        self._check_unique(kind, name, spec)
        stored = self._put(
            kind, name, spec, current.created_at, _now().isoformat(), who, if_match=current.revision
        )
        self._record(who, "updated", kind, name, current, stored)
        return stored

    def delete(self, kind: str, name: str, who: str, revision: str | None = None) -> StoredObject:
        _check_kind(kind)
        current = self.get(kind, name)
        if revision and _etag(revision) != current.revision:
            raise conflict(
                f"{kind.rstrip('s')} {name!r} is at revision {current.revision}, "
                f"not {_etag(revision)}"
            )
        if kind == "destinations":
            users = [
                p.name
                for p in self.list_objects("pipelines")
                if name in {d for r in p.spec.get("routes") or () for d in r["destinations"]}
            ]
            if users:
                raise conflict(f"destination {name!r} is used by pipeline(s) {', '.join(users)}")
        with _s3(f"{kind.rstrip('s')} {name!r}"):
            self.store.client._execute(
                "DELETE",
                self.store.bucket,
                keys.config(kind, name),
                headers={"If-Match": f'"{current.revision}"'},
            )
        self._record(who, "deleted", kind, name, current, None)
        return current

    def _put(
        self,
        kind: str,
        name: str,
        spec: dict[str, Any],
        created_at: str,
        updated_at: str,
        who: str,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> StoredObject:
        document = {
            "kind": kind,
            "name": name,
            "spec": spec,
            "writeId": new_id(),
            "createdAt": created_at,
            "updatedAt": updated_at,
            "updatedBy": who,
        }
        headers: Headers = {"Content-Type": "application/json"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        data = json.dumps(document, indent=1).encode()
        with _s3(f"{kind.rstrip('s')} {name!r}"):
            result = self.store.client._put_object(
                self.store.bucket, keys.config(kind, name), data, headers
            )
        return StoredObject(kind, name, spec, _etag(result.etag), created_at, updated_at, who)

    # -- checks across objects ----------------------------------------------------------

    def _check_unique(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind == "ae-titles":
            for other in self.list_objects(kind):
                if other.name != name and other.spec.get("ae-title") == spec["ae-title"]:
                    raise conflict(f"AE title {spec['ae-title']!r} is already {other.name!r}")
        elif kind == "sources":
            pair = (spec["ae-title"], spec["host-ip"])
            for other in self.list_objects(kind):
                if other.name != name and (other.spec["ae-title"], other.spec["host-ip"]) == pair:
                    raise conflict(f"source {pair[0]!r} at {pair[1]} is already {other.name!r}")

    def _check_references(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind != "pipelines":
            return
        wanted = {d for route in spec.get("routes") or () for d in route["destinations"]}
        if not wanted:
            return
        known = {d.name for d in self.static.dicom.scu.destinations}
        known |= {d.name for d in self.list_objects("destinations")}
        missing = sorted(wanted - known)
        if missing:
            raise invalid(
                f"pipeline {name!r} routes to unknown destination(s): {', '.join(missing)}"
            )

    # -- after a change -----------------------------------------------------------------

    def _record(
        self,
        who: str,
        action: Action,
        kind: str,
        name: str,
        before: StoredObject | None,
        after: StoredObject | None,
    ) -> None:
        """Audit record, then config.changed. The change is stored already: failures here
        are logged and raised as TransientError (the API answers 503, saying so)."""
        now = _now()
        record = AuditRecord(
            id=new_id(),
            time=now.isoformat(),
            who=who,
            action=action,
            kind=kind,
            name=name,
            before=None if before is None else before.spec,
            after=None if after is None else after.spec,
            previous_revision=None if before is None else before.revision,
            revision=None if after is None else after.revision,
        )
        problems = []
        try:
            self.store.put_json(audit_key(now, record.id), record.model_dump(mode="json"))
        except SeriesflowError as exc:
            log.error("audit record not written", extra={"kind": kind, "reason": exc.reason})
            problems.append(f"audit record not written ({exc.reason})")
        log.info(
            "configuration changed",
            extra={"kind": kind, "object_name": name, "action": action},
        )
        if self.notify is not None:
            try:
                self.notify(ConfigChanged(kind=kind, name=name, action=action))
            except SeriesflowError as exc:
                log.error("config.changed not published", extra={"reason": exc.reason})
                problems.append(f"config.changed not published ({exc.reason})")
        if problems:
            raise TransientError(
                f"{kind.rstrip('s')} {name!r} was {action}, but " + "; ".join(problems)
            )

    def audit(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, newest first."""
        prefix = f"config/{AUDIT_KIND}/"
        names = sorted(self.store.list(prefix), reverse=True)[:limit]
        return [AuditRecord.model_validate(self.store.get_json(k)) for k in names]

    # -- the server -----------------------------------------------------------------------

    def check_conditional_writes(self) -> None:
        """Refuse a store that ignores If-None-Match / If-Match (updates could be lost)."""
        key = keys.config("probe", new_id())
        headers: Headers = {"Content-Type": "application/json", "If-None-Match": "*"}
        with _s3("conditional write probe"):
            self.store.client._put_object(self.store.bucket, key, b"{}", headers)
        try:
            with _s3("conditional write probe"):
                self.store.client._put_object(self.store.bucket, key, b"{ }", headers)
        except ApiError as exc:
            if exc.status == 409:
                return
            raise
        finally:
            self.store.delete(key)
        raise PermanentError(
            "the object store ignores conditional writes (If-None-Match), so concurrent "
            "configuration changes could be lost; use AWS S3, MinIO or a recent SeaweedFS (4.x)"
        )


def audit_key(when: datetime, record_id: str) -> str:
    return keys.config(AUDIT_KIND, f"{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{record_id}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise not_found(f"no configuration kind {kind!r} (one of {', '.join(KINDS)})")
