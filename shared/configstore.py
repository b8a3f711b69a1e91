"""The configuration store: AE titles, sources, destinations and pipelines, with revisions,
an audit log, referential integrity, and the live view every service reads.

Layout (one JSON document per object, keys from :func:`shared.keys.config`)::

    config/ae-titles/<name>.json      one of our AE titles   (spec as dicom > scp > ae-titles)
    config/sources/<name>.json        an allowed source      (spec as dicom > scp > sources)
    config/destinations/<name>.json   a DICOM destination    (spec as dicom > scu > destinations)
    config/pipelines/<name>.json      a pipeline definition  (spec as docs/pipelines.md)
    config/audit/<time>-<id>.json     one audit record per change

A document is ``{"kind", "name", "spec", "writeId", "createdAt", "updatedAt", "updatedBy",
"overridesFile"}``; ``spec`` uses the configuration file's (hyphenated) keys.

**Concurrency.** An object's *revision* is the ETag of its stored document; ``writeId`` is
fresh for every write, so no two writes share a revision. A create is a conditional put
(``If-None-Match: *``), an update ``If-Match: <revision read>``, a delete with a revision
``If-Match`` too: of two writers from the same revision exactly one wins, the other gets
409. The guarantee is per object; checks across objects (references) read the others
first and are not atomic with the write.

**Referential integrity.** An AE title must name a pipeline that exists (by name or Clara
id, stored or in the pipelines folder); a pipeline's routes must name destinations that
exist; a pipeline or destination still used cannot be deleted (409, naming the users);
an update of a pipeline may not drop an id an AE title uses.

**The configuration file** (``SERIESFLOW_CONFIG``) and the stored objects, per kind, follow
Clara's ``read-*-from-crd`` (:meth:`SeriesflowConfig.origin`): ``store`` (flag true): the
stored objects only; ``file`` (flag false): the file's entries only, and the API refuses
to write that kind; ``both`` (flag absent): both. The API lists show the file's entries,
marked ``origin: file``; they cannot be changed or deleted through the API. **The file
wins**: creating an AE title, source or destination that the file defines answers 409,
unless the request says ``override_file`` explicitly; such an object is recorded (and
audited) with ``overridesFile: true`` and only then replaces the file's entry in the live
view. Pipelines from the pipelines folder work the same way, without override.

**The live view** (:class:`LiveConfig`): the file's configuration with the usable stored
objects merged in, and the pipeline registry (folder + stored). It is rebuilt when the
store's ``config/`` listing changes (checked at most once every ``check_seconds``), or at
once after :meth:`LiveConfig.invalidate` (a ``config.changed`` event). A stored object
that does not validate is skipped with its reason logged; the others still apply.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from shared import keys
from shared.config import (
    AETitleConfig,
    DestinationConfig,
    SeriesflowConfig,
    SourceConfig,
)
from shared.errors import (
    InvalidIdentifierError,
    PermanentError,
    SeriesflowError,
    TransientError,
)
from shared.events import ConfigChanged, new_id
from shared.identifiers import validate_name
from shared.logs import get_logger
from shared.pipelines import Pipeline, PipelineRegistry, parse_pipeline, with_pipeline_id
from shared.store import ObjectNotFoundError, ObjectStore, PreconditionFailedError

log = get_logger("configstore")

Kind = Literal["ae-titles", "sources", "destinations", "pipelines"]
KINDS: tuple[Kind, ...] = ("ae-titles", "sources", "destinations", "pipelines")
AUDIT_KIND = "audit"
Action = Literal["created", "updated", "deleted"]
Origin = Literal["store", "file"]
FILE_REVISION = "file"


class ConfigError(PermanentError):
    """A change or read that cannot be done as asked: ``status`` is the HTTP status the API
    answers, ``code`` a short word."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code


class DamagedObjectError(ConfigError):
    """A stored document that cannot be read (written behind the API's back, or damaged):
    the services skip it; the API answers 422 and lets it be deleted."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(
            422,
            "damaged",
            f"{_what(kind, name)}: the stored document is damaged; delete it and create it again",
        )


def not_found(reason: str) -> ConfigError:
    return ConfigError(404, "not_found", reason)


def conflict(reason: str) -> ConfigError:
    return ConfigError(409, "conflict", reason)


def invalid(reason: str) -> ConfigError:
    return ConfigError(422, "invalid", reason)


@dataclass(frozen=True)
class StoredObject:
    kind: str
    name: str
    spec: dict[str, Any]
    revision: str
    created_at: str
    updated_at: str
    updated_by: str
    origin: Origin = "store"
    overrides_file: bool = False


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
    overrides_file: bool = False


Notifier = Callable[[ConfigChanged], None]


def _now() -> datetime:
    return datetime.now(UTC)


def _what(kind: str, name: str) -> str:
    return f"{kind.rstrip('s').replace('-', ' ')} {name!r}"


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


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise not_found(f"no configuration kind {kind!r} (one of {', '.join(KINDS)})")


_MODELS: dict[str, type[BaseModel]] = {
    "ae-titles": AETitleConfig,
    "sources": SourceConfig,
    "destinations": DestinationConfig,
}


def normalize_spec(
    kind: str, name: str, spec: dict[str, Any], keep_id: str | None = None
) -> dict[str, Any]:
    """``spec`` validated and in its canonical form; ConfigError 422 if it is not valid."""
    check_name(name, kind)
    check_kind(kind)
    if kind == "pipelines":
        return _pipeline_spec(name, spec, keep_id)
    if kind == "destinations":
        if spec.get("name", name) != name:
            raise invalid(f"destination name {spec.get('name')!r} differs from {name!r}")
        spec = {**spec, "name": name}
    try:
        return _MODELS[kind].model_validate(spec).model_dump(by_alias=True, mode="json")
    except ValidationError as exc:
        raise invalid(f"{_what(kind, name)}: {_first_error(exc)}") from exc


def _pipeline_spec(name: str, spec: dict[str, Any], keep_id: str | None) -> dict[str, Any]:
    if "rules-file" in spec:
        raise invalid("a pipeline stored through the API must carry its rules inline ('rules')")
    if spec.get("name", name) != name:
        raise invalid(f"pipeline name {spec.get('name')!r} differs from {name!r}")
    spec = with_pipeline_id({**spec, "name": name}, keep_id)
    try:
        parse_pipeline(spec, f"pipeline {name!r}")
    except SeriesflowError as exc:
        raise invalid(exc.reason) from exc
    plain: dict[str, Any] = json.loads(json.dumps(spec))  # plain JSON, as stored
    return plain


def parse_stored(kind: str, name: str, spec: dict[str, Any]) -> Any:
    """The model of a stored spec (AETitleConfig, SourceConfig, DestinationConfig, Pipeline);
    any failure raises :class:`PermanentError` with the reason."""
    try:
        if kind == "pipelines":
            return parse_pipeline(spec, f"stored pipeline {name!r}")
        return _MODELS[kind].model_validate(spec)
    except SeriesflowError:
        raise
    except ValidationError as exc:
        raise PermanentError(f"{_what(kind, name)}: {_first_error(exc)}") from exc
    except Exception as exc:  # a damaged document: whatever it is, it must not stop the rest
        raise PermanentError(f"{_what(kind, name)}: {type(exc).__name__}: {exc}") from exc


# -- the file's entries, as the API shows them ----------------------------------------------


def _defined(static: SeriesflowConfig, kind: str) -> bool:
    """Whether the configuration file lists ``kind`` (not a built-in default)."""
    section = "scu" if kind == "destinations" else "scp"
    field_name = kind.replace("-", "_")
    part = getattr(static.dicom, section)
    return (
        "dicom" in static.model_fields_set
        and section in static.dicom.model_fields_set
        and field_name in part.model_fields_set
    )


def _file_objects(static: SeriesflowConfig, kind: str) -> list[StoredObject]:
    if not _defined(static, kind):
        return []
    if kind == "ae-titles":
        items = [
            (a.ae_title, a.model_dump(by_alias=True, mode="json"))
            for a in static.dicom.scp.ae_titles
        ]
    elif kind == "sources":
        items = [
            (s.ae_title, s.model_dump(by_alias=True, mode="json")) for s in static.dicom.scp.sources
        ]
    elif kind == "destinations":
        items = [
            (d.name, d.model_dump(by_alias=True, mode="json"))
            for d in static.dicom.scu.destinations
        ]
    else:
        items = []
    return [StoredObject(kind, n, spec, FILE_REVISION, "", "", "file", "file") for n, spec in items]


def _file_key(kind: str, spec: dict[str, Any]) -> Any:
    """What makes two entries the same: AE title, (AE title, host), destination name."""
    if kind == "ae-titles":
        return spec.get("ae-title")
    if kind == "sources":
        return (spec.get("ae-title"), spec.get("host-ip"))
    return spec.get("name")


class ConfigStore:
    """AE titles, sources, destinations and pipelines in the object store.

    ``static`` is the configuration file, ``file_pipelines`` the pipelines folder; both
    count in reference checks and are shown by :meth:`list_objects`. ``notify`` is called
    after every change (the config API publishes ``config.changed``).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        static: SeriesflowConfig | None = None,
        file_pipelines: PipelineRegistry | None = None,
        notify: Notifier | None = None,
    ) -> None:
        self.store = store
        self.static = static or SeriesflowConfig()
        self.file_pipelines = file_pipelines or PipelineRegistry([])
        self.notify = notify

    # -- reading ---------------------------------------------------------------------------

    def _origin(self, kind: str) -> str:
        if kind == "pipelines":
            return "both"
        return self.static.origin(kind)  # type: ignore[arg-type]

    def _read(self, kind: str, name: str) -> StoredObject:
        try:
            data, etag = self.store.get_with_etag(keys.config(kind, name))
        except ObjectNotFoundError as exc:
            raise not_found(f"{_what(kind, name)}: not found") from exc
        try:
            document = json.loads(data)
            return StoredObject(
                kind=kind,
                name=str(document["name"]),
                spec=dict(document["spec"]),
                revision=etag,
                created_at=str(document.get("createdAt", "")),
                updated_at=str(document.get("updatedAt", "")),
                updated_by=str(document.get("updatedBy", "")),
                overrides_file=bool(document.get("overridesFile", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DamagedObjectError(kind, name) from exc

    def get(self, kind: str, name: str) -> StoredObject:
        """A stored object, else the file's entry of that name; 404 if neither."""
        check_kind(kind)
        check_name(name, kind)
        try:
            return self._read(kind, name)
        except ConfigError as exc:
            if exc.status != 404:
                raise
            for item in self._file_entries(kind):
                if item.name == name:
                    return item
            raise

    def find(self, kind: str, name: str) -> StoredObject | None:
        try:
            return self.get(kind, name)
        except ConfigError as exc:
            if exc.status == 404:
                return None
            raise

    def _file_entries(self, kind: str) -> list[StoredObject]:
        if kind == "pipelines":
            return [
                StoredObject(
                    "pipelines",
                    p.name,
                    {"name": p.name, "id": p.id},
                    FILE_REVISION,
                    "",
                    "",
                    "file",
                    "file",
                )
                for p in self.file_pipelines.all()
            ]
        if self._origin(kind) == "store":
            return []
        return _file_objects(self.static, kind)

    def stored(self, kind: str) -> list[StoredObject]:
        """The objects stored through the API (damaged ones are logged and left out)."""
        check_kind(kind)
        prefix = f"config/{kind}/"
        names = [
            k[len(prefix) : -len(".json")] for k in self.store.list(prefix) if k.endswith(".json")
        ]
        items = []
        for name in sorted(n for n in names if n):
            try:
                items.append(self._read(kind, name))
            except DamagedObjectError as exc:
                log.error("stored configuration skipped", extra={"reason": exc.reason})
            except ConfigError as exc:  # deleted between list and read
                if exc.status != 404:
                    raise
            except PermanentError as exc:  # a key whose name is not valid
                log.error("stored configuration skipped", extra={"reason": exc.reason})
        return items

    def list_objects(self, kind: str) -> list[StoredObject]:
        """The file's entries (``origin: file``) and the stored objects, by name."""
        stored = self.stored(kind)
        names = {s.name for s in stored}
        shown = [f for f in self._file_entries(kind) if f.name not in names]
        return sorted(shown + stored, key=lambda s: (s.name, s.origin))

    # -- writing ---------------------------------------------------------------------------

    def create(
        self,
        kind: str,
        name: str,
        spec: dict[str, Any],
        who: str,
        *,
        override_file: bool = False,
    ) -> StoredObject:
        check_kind(kind)
        spec = normalize_spec(kind, name, spec)
        self._check_writable(kind)
        self._check_file(kind, name, spec, override_file)
        self._check_references(kind, name, spec)
        if self._stored_exists(kind, name):
            raise conflict(f"{_what(kind, name)} already exists")
        self._check_unique(kind, name, spec)
        now = _now().isoformat()
        try:
            stored = self._put(kind, name, spec, now, now, who, override_file, create=True)
        except PreconditionFailedError as exc:
            raise conflict(f"{_what(kind, name)} already exists") from exc
        self._record(who, "created", kind, name, None, stored)
        return stored

    def update(
        self,
        kind: str,
        name: str,
        spec: dict[str, Any],
        revision: str | None,
        who: str,
        *,
        override_file: bool = False,
    ) -> StoredObject:
        check_kind(kind)
        if not revision:
            raise ConfigError(
                428,
                "precondition_required",
                "an update must give the revision it read (If-Match header or 'revision')",
            )
        self._check_writable(kind)
        current = self.get(kind, name)
        if current.origin == "file":
            raise conflict(self._file_reason(kind, name, "changed"))
        spec = normalize_spec(kind, name, spec, keep_id=current.spec.get("id"))
        if _etag(revision) != current.revision:
            raise conflict(
                f"{_what(kind, name)} is at revision {current.revision}, "
                f"not {_etag(revision)}: read it again and retry"
            )
        override = override_file or current.overrides_file
        self._check_file(kind, name, spec, override)
        self._check_references(kind, name, spec)
        self._check_still_used(kind, name, current, spec)
        self._check_unique(kind, name, spec)
        try:
            stored = self._put(
                kind,
                name,
                spec,
                current.created_at,
                _now().isoformat(),
                who,
                override,
                if_match=current.revision,
            )
        except PreconditionFailedError as exc:
            raise conflict(f"{_what(kind, name)} changed since it was read: retry") from exc
        self._record(who, "updated", kind, name, current, stored)
        return stored

    def delete(self, kind: str, name: str, who: str, revision: str | None = None) -> StoredObject:
        check_kind(kind)
        try:
            current = self.get(kind, name)
        except DamagedObjectError:
            damaged = StoredObject(kind, name, {}, "", "", "", who)
            self._check_still_used(kind, name, damaged, None)
            self.store.delete(keys.config(kind, name))
            self._record(who, "deleted", kind, name, None, None)
            return damaged
        if current.origin == "file":
            raise conflict(self._file_reason(kind, name, "deleted"))
        if revision and _etag(revision) != current.revision:
            raise conflict(
                f"{_what(kind, name)} is at revision {current.revision}, not {_etag(revision)}"
            )
        self._check_still_used(kind, name, current, None)
        try:
            self.store.delete(keys.config(kind, name), if_match=current.revision)
        except PreconditionFailedError as exc:
            raise conflict(f"{_what(kind, name)} changed since it was read: retry") from exc
        self._record(who, "deleted", kind, name, current, None)
        return current

    def _stored_exists(self, kind: str, name: str) -> bool:
        return self.store.exists(keys.config(kind, name))

    def _put(
        self,
        kind: str,
        name: str,
        spec: dict[str, Any],
        created_at: str,
        updated_at: str,
        who: str,
        overrides_file: bool,
        *,
        create: bool = False,
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
            "overridesFile": overrides_file,
        }
        etag = self.store.put_json(
            keys.config(kind, name), document, if_none_match=create, if_match=if_match
        )
        return StoredObject(
            kind, name, spec, etag, created_at, updated_at, who, "store", overrides_file
        )

    # -- checks ----------------------------------------------------------------------------

    def _file_reason(self, kind: str, name: str, action: str) -> str:
        where = "the pipelines folder" if kind == "pipelines" else "the configuration file"
        return f"{_what(kind, name)} is defined in {where} and cannot be {action} through the API"

    def _check_writable(self, kind: str) -> None:
        if kind != "pipelines" and self._origin(kind) == "file":
            flag = {
                "ae-titles": "dicom.scp.read-aetitles-from-crd",
                "sources": "dicom.scp.read-sources-from-crd",
                "destinations": "dicom.scu.read-destinations-from-crd",
            }[kind]
            raise conflict(
                f"{kind} come from the configuration file only ({flag}: false); change them there"
            )

    def _check_file(self, kind: str, name: str, spec: dict[str, Any], override: bool) -> None:
        """The file wins: an entry that would replace one of its entries needs an override."""
        if kind == "pipelines":
            for key in filter(None, (name, spec.get("id"))):
                if self.file_pipelines.get(str(key)) is not None:
                    raise conflict(
                        f"pipeline {key!r} is defined in the pipelines folder; "
                        "choose another name (and id)"
                    )
            return
        key = _file_key(kind, spec)
        same = [
            e.name
            for e in self._file_entries(kind)
            if _file_key(kind, e.spec) == key or e.name == name
        ]
        if not same or (override and kind != "sources"):
            return
        how = (
            "a source the file lists needs no copy"
            if kind == "sources"
            else "to replace it, repeat the request with overrideFile=true (audited)"
        )
        raise conflict(
            f"{_what(kind, name)}: {same[0]!r} is defined in the configuration file, "
            f"which wins; {how}"
        )

    def _pipeline_keys(self) -> dict[str, str]:
        """Every key a pipeline answers to (name, id) -> pipeline name; file and stored."""
        known: dict[str, str] = {}
        for pipeline in self.file_pipelines.all():
            known[pipeline.name] = pipeline.name
            if pipeline.id:
                known[pipeline.id] = pipeline.name
        for key, pipeline in self.file_pipelines.items():
            known[key] = pipeline.name
        for item in self.stored("pipelines"):
            known[item.name] = item.name
            if item.spec.get("id"):
                known[str(item.spec["id"])] = item.name
        return known

    def _ae_title_users(self) -> list[tuple[str, str]]:
        """(AE title, pipeline key) of every AE title that runs a pipeline."""
        users = []
        if self._origin("ae-titles") != "store":
            for entry in self.static.dicom.scp.ae_titles:
                target = self.static.pipeline_for(entry.ae_title)
                if target:
                    users.append((entry.ae_title, target))
        if self._origin("ae-titles") != "file":
            for item in self.stored("ae-titles"):
                if item.spec.get("pipeline"):
                    users.append((str(item.spec.get("ae-title")), str(item.spec["pipeline"])))
        return users

    def _destination_names(self) -> set[str]:
        names: set[str] = set()
        if self._origin("destinations") != "store":
            names |= {d.name for d in self.static.dicom.scu.destinations}
        if self._origin("destinations") != "file":
            names |= {d.name for d in self.stored("destinations")}
        return names

    def _check_references(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind == "ae-titles":
            target = spec.get("pipeline")
            if not target:
                mapped = any(
                    m.clara_ae_title == spec.get("ae-title") for m in self.static.pipeline_mappings
                )
                if not mapped:
                    raise invalid(f"AE title {spec.get('ae-title')!r} names no pipeline")
                return
            if target not in self._pipeline_keys():
                raise invalid(
                    f"AE title {spec.get('ae-title')!r} names pipeline {target!r}, which does "
                    "not exist (create the pipeline first)"
                )
        elif kind == "pipelines":
            wanted = {d for route in spec.get("routes") or () for d in route["destinations"]}
            missing = sorted(wanted - self._destination_names())
            if missing:
                raise invalid(
                    f"pipeline {name!r} routes to unknown destination(s): {', '.join(missing)}"
                )

    def _check_still_used(
        self, kind: str, name: str, current: StoredObject, spec: dict[str, Any] | None
    ) -> None:
        """A pipeline or destination in use may not disappear (delete, or a dropped id)."""
        if kind == "pipelines":
            dropped = {name, str(current.spec.get("id") or "")} - {""}
            if spec is not None:
                dropped -= {name, str(spec.get("id") or "")}
            users = sorted(ae for ae, target in self._ae_title_users() if target in dropped)
            if users:
                verb = "deleted" if spec is None else "given another id"
                raise conflict(
                    f"pipeline {name!r} cannot be {verb}: AE title(s) {', '.join(users)} use it"
                )
        elif kind == "destinations" and spec is None:
            users = sorted(
                {p.name for p in self.file_pipelines.all() if name in p.destinations()}
                | {
                    p.name
                    for p in self.stored("pipelines")
                    if name in {d for r in p.spec.get("routes") or () for d in r["destinations"]}
                }
            )
            if users:
                raise conflict(f"destination {name!r} is used by pipeline(s) {', '.join(users)}")

    def _check_unique(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind not in ("ae-titles", "sources"):
            return
        key = _file_key(kind, spec)
        for other in self.stored(kind):
            if other.name != name and _file_key(kind, other.spec) == key:
                if kind == "ae-titles":
                    raise conflict(f"AE title {spec['ae-title']!r} is already {other.name!r}")
                raise conflict(
                    f"source {spec['ae-title']!r} at {spec['host-ip']} is already {other.name!r}"
                )

    # -- after a change --------------------------------------------------------------------

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
            overrides_file=after is not None and after.overrides_file,
        )
        problems = []
        try:
            self.store.put_json(audit_key(now, record.id), record.model_dump(mode="json"))
        except SeriesflowError as exc:
            log.error("audit record not written", extra={"kind": kind, "reason": exc.reason})
            problems.append(f"audit record not written ({exc.reason})")
        log.info(
            "configuration changed",
            extra={
                "kind": kind,
                "object_name": name,
                "action": action,
                "overrides_file": record.overrides_file,
            },
        )
        if self.notify is not None:
            try:
                self.notify(ConfigChanged(kind=kind, name=name, action=action))
            except SeriesflowError as exc:
                log.error("config.changed not published", extra={"reason": exc.reason})
                problems.append(f"config.changed not published ({exc.reason})")
        if problems:
            raise TransientError(f"{_what(kind, name)} was {action}, but " + "; ".join(problems))

    def audit(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, newest first."""
        prefix = f"config/{AUDIT_KIND}/"
        names = sorted(self.store.list(prefix), reverse=True)[:limit]
        return [AuditRecord.model_validate(self.store.get_json(k)) for k in names]

    def check_conditional_writes(self) -> None:
        """Refuse a store that ignores If-None-Match / If-Match (updates could be lost)."""
        self.store.check_conditional_writes(keys.config("probe", new_id()))


def audit_key(when: datetime, record_id: str) -> str:
    return keys.config(AUDIT_KIND, f"{when.strftime('%Y%m%dT%H%M%S.%fZ')}-{record_id}")


def _etag(value: str | None) -> str:
    return (value or "").strip().removeprefix("W/").strip('"')


# -- the live view -------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveView:
    """The configuration in force: the file's with the usable stored objects merged in."""

    config: SeriesflowConfig
    pipelines: PipelineRegistry
    skipped: tuple[str, ...] = field(default=())

    def pipeline_for(self, ae_title: str) -> Pipeline | None:
        """The pipeline an AE title runs now, or None (no mapping, or it does not exist)."""
        target = self.config.pipeline_for(ae_title)
        return None if target is None else self.pipelines.get(target)


def _usable(kind: str, item: StoredObject, skipped: list[str]) -> Any:
    try:
        return parse_stored(kind, item.name, item.spec)
    except PermanentError as exc:
        skipped.append(exc.reason)
        log.error(
            "stored configuration skipped: not valid",
            extra={"kind": kind, "object_name": item.name, "reason": exc.reason},
        )
        return None


def build_view(
    configs: ConfigStore, static: SeriesflowConfig, file_pipelines: PipelineRegistry
) -> LiveView:
    """Read every stored object and merge (see the module docstring: the file wins unless
    a stored object overrides it explicitly). Each object is validated on its own."""
    skipped: list[str] = []

    def merged(kind: str, base: Iterable[Any], key: Callable[[Any], Any]) -> tuple[Any, ...]:
        entries = {key(e): e for e in base}
        if static.origin(kind) == "file":  # type: ignore[arg-type]
            return tuple(entries.values())
        from_file = set(entries) if _defined(static, kind) else set()
        for item in configs.stored(kind):
            model = _usable(kind, item, skipped)
            if model is None:
                continue
            k = key(model)
            if k in from_file and not item.overrides_file:
                reason = f"{_what(kind, item.name)}: the configuration file's entry wins"
                skipped.append(reason)
                log.warning("stored configuration not used", extra={"reason": reason})
                continue
            entries[k] = model
        return tuple(entries.values())

    titles = merged("ae-titles", static.dicom.scp.ae_titles, lambda a: a.ae_title)
    sources = merged("sources", static.dicom.scp.sources, lambda s: (s.ae_title, s.host_ip))
    destinations = merged("destinations", static.dicom.scu.destinations, lambda d: d.name)
    scp = static.dicom.scp.model_copy(update={"ae_titles": titles, "sources": sources})
    scu = static.dicom.scu.model_copy(update={"destinations": destinations})
    config = static.model_copy(
        update={"dicom": static.dicom.model_copy(update={"scp": scp, "scu": scu})}
    )

    by_key = dict(file_pipelines.items())
    for item in configs.stored("pipelines"):
        pipeline = _usable("pipelines", item, skipped)
        if pipeline is None:
            continue
        taken = [k for k in filter(None, (pipeline.name, pipeline.id)) if k in by_key]
        if taken:
            reason = f"stored pipeline {item.name!r}: {', '.join(taken)} already defined"
            skipped.append(reason)
            log.warning("stored configuration not used", extra={"reason": reason})
            continue
        for k in filter(None, (pipeline.name, pipeline.id)):
            by_key[k] = pipeline
    return LiveView(config, PipelineRegistry.from_keys(by_key), tuple(skipped))


class LiveConfig:
    """The live view, kept current cheaply and safely; thread-safe.

    :meth:`view` lists ``config/`` (keys and times, not contents) at most once every
    ``check_seconds`` and rebuilds the view only when the listing changed, or at once after
    :meth:`invalidate`. When the store cannot be read, the last view stays in force.
    """

    def __init__(
        self,
        store: ObjectStore,
        static: SeriesflowConfig,
        check_seconds: float = 1.0,
        *,
        file_pipelines: PipelineRegistry | None = None,
    ) -> None:
        self.static = static
        self.file_pipelines = file_pipelines or PipelineRegistry([])
        self.check_seconds = check_seconds
        self.configs = ConfigStore(store, static=static, file_pipelines=self.file_pipelines)
        self._view = LiveView(static, self.file_pipelines)
        self._fingerprint: tuple[tuple[str, str], ...] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Check the store at the next call (a ``config.changed`` arrived)."""
        with self._lock:
            self._checked = float("-inf")

    def view(self) -> LiveView:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.check_seconds:
                return self._view
            self._checked = now
            try:
                # ETags, not only times: S3 times have one-second resolution, and two
                # writes within a second must not look like none.
                fingerprint = tuple(
                    sorted(
                        (info.key, info.etag)
                        for info in self.configs.store.list_info("config/")
                        if info.key.startswith(tuple(f"config/{k}/" for k in KINDS))
                    )
                )
                if fingerprint != self._fingerprint:
                    self._view = build_view(self.configs, self.static, self.file_pipelines)
                    self._fingerprint = fingerprint
            except SeriesflowError as exc:
                log.warning(
                    "stored configuration not read; keeping the current one",
                    extra={"reason": exc.reason},
                )
            return self._view

    def current(self) -> SeriesflowConfig:
        return self.view().config

    # PipelineLookup (services.stage): pipelines by name or Clara id, as configured now.

    def get(self, key: str) -> Pipeline | None:
        """The pipeline as stored now: the store's listing is checked on every call (one
        LIST request; contents are read again only when it changed), so the next job after
        a change through the API uses the changed pipeline."""
        self.invalidate()
        return self.view().pipelines.get(key)

    def all(self) -> list[Pipeline]:
        return self.view().pipelines.all()
