"""Events: versioned pydantic models inside one envelope.

Every message on the ``seriesflow`` exchange is an :class:`Envelope` whose ``body`` is one
of the event models below, chosen by ``type``. Bodies carry object keys, never pixel data.
Event IDs are derived from the job and the stage (:func:`event_id`), so a stage that runs
twice publishes the same event, and consumers can recognise work already done.

==============================  =================================  ==========================
routing key                     body                               published by
==============================  =================================  ==========================
``job.received.<pipeline>``     :class:`JobReceived`               receiver
``job.parsed.<pipeline>``       :class:`JobParsed`                 parser
``job.selected.<pipeline>``     :class:`JobSelected`               selector
``job.failed.<pipeline>``       :class:`JobFailed`                 any stage
``export.requested.<dest>``     :class:`ExportRequested`           selector
``export.completed``            :class:`ExportCompleted`           exporter
``config.changed``              :class:`ConfigChanged`             config API
==============================  =================================  ==========================

An envelope is refused (:class:`InvalidInputError`, so the broker dead-letters it at once
with the reason) when its ``version`` is not the one this seriesflow reads for its
``type``, when ``type`` differs from the body's, or when an object key it carries is not
a safe key: segments of letters, digits and ``._-``, none empty, none starting with a
dot, never ``..`` (:func:`object_key`). Such a key would otherwise reach the object
store's client, which refuses it with an error no retry can mend.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from shared.errors import InvalidIdentifierError, InvalidInputError
from shared.identifiers import validate_name
from shared.keys import validate_file_name, validate_id

EXCHANGE = "seriesflow"
_NAMESPACE = uuid.UUID("4f3c1d0e-5a8b-4c3e-9f11-7b2d6a9e0c55")


def event_id(*parts: str) -> str:
    """A stable event ID for ``parts`` (e.g. job ID and stage)."""
    return uuid.uuid5(_NAMESPACE, "/".join(parts)).hex


def new_id() -> str:
    """A fresh 32-hex-digit identifier (jobs, associations, exports)."""
    return uuid.uuid4().hex


_MAX_KEY = 1024


def object_key(value: str) -> str:
    """``value`` if it is a safe object key (see the module docstring), else ValueError."""
    if not value or len(value) > _MAX_KEY:
        raise ValueError(f"object key of {len(value)} characters")
    try:
        for segment in value.split("/"):
            validate_file_name(segment)
    except InvalidIdentifierError as exc:
        raise ValueError(f"object key {value[:200]!r} is not safe: {exc.reason}") from exc
    return value


ObjectKey = Annotated[str, AfterValidator(object_key)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    version: ClassVar[int] = 1

    def routing_key(self) -> str:
        raise NotImplementedError


class _PipelineBody(_Body):
    pipeline: str

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, value: str) -> str:
        return validate_name(value, "pipeline")


class JobReceived(_PipelineBody):
    type: Literal["job.received"] = "job.received"
    manifest_key: ObjectKey
    instance_count: int
    called_ae_title: str
    calling_ae_title: str

    def routing_key(self) -> str:
        return f"job.received.{self.pipeline}"


class JobParsed(_PipelineBody):
    type: Literal["job.parsed"] = "job.parsed"
    metadata_key: ObjectKey
    series_images_key: ObjectKey
    image_keys: list[ObjectKey]

    def routing_key(self) -> str:
        return f"job.parsed.{self.pipeline}"


class JobSelected(_PipelineBody):
    type: Literal["job.selected"] = "job.selected"
    selected_images_key: ObjectKey
    selections: dict[str, dict[str, str]]

    def routing_key(self) -> str:
        return f"job.selected.{self.pipeline}"


class JobFailed(_PipelineBody):
    type: Literal["job.failed"] = "job.failed"
    stage: str
    reason: str

    def routing_key(self) -> str:
        return f"job.failed.{self.pipeline}"


class ExportRequested(_Body):
    type: Literal["export.requested"] = "export.requested"
    export_id: str
    destination: str
    pipeline: str
    selection: str
    instance_keys: list[ObjectKey]

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        return validate_name(value, "destination")

    def routing_key(self) -> str:
        return f"export.requested.{self.destination}"


class FileStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: ObjectKey
    status: Literal["sent", "failed", "skipped"]
    detail: str = ""


class ExportCompleted(_Body):
    type: Literal["export.completed"] = "export.completed"
    export_id: str
    destination: str
    status: Literal["succeeded", "failed"]
    files: list[FileStatus]
    attempt: int = 1

    def routing_key(self) -> str:
        return "export.completed"


class ConfigChanged(_Body):
    type: Literal["config.changed"] = "config.changed"
    kind: str
    name: str
    action: Literal["created", "updated", "deleted"]

    def routing_key(self) -> str:
        return "config.changed"


Body = Annotated[
    JobReceived
    | JobParsed
    | JobSelected
    | JobFailed
    | ExportRequested
    | ExportCompleted
    | ConfigChanged,
    Field(discriminator="type"),
]


BODY_TYPES: dict[str, type[_Body]] = {
    body.model_fields["type"].default: body
    for body in (
        JobReceived,
        JobParsed,
        JobSelected,
        JobFailed,
        ExportRequested,
        ExportCompleted,
        ConfigChanged,
    )
}
"""Each event type and its body model (whose ``version`` is the one this code reads)."""


class Envelope(BaseModel):
    """What travels on the exchange and is stored for replay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    type: str
    version: int
    job_id: str
    correlation_id: str
    created_at: datetime
    producer: str
    body: Body

    @field_validator("event_id", "job_id", "correlation_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        return validate_id(value)

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        """An unknown version is refused before its body is read (it may not parse)."""
        if isinstance(data, dict):
            kind, version = data.get("type"), data.get("version")
            body = BODY_TYPES.get(kind) if isinstance(kind, str) else None
            if body is not None and version != body.version:
                raise ValueError(
                    f"{kind} version {version!r} is not supported "
                    f"(this seriesflow reads version {body.version})"
                )
        return data

    @model_validator(mode="after")
    def _same_type(self) -> Envelope:
        if self.type != self.body.type:
            raise ValueError(
                f"envelope type {self.type!r} differs from its body's {self.body.type!r}"
            )
        return self

    @property
    def routing_key(self) -> str:
        return self.body.routing_key()

    @classmethod
    def wrap(
        cls,
        body: Any,
        *,
        job_id: str,
        producer: str,
        event_id: str,
        correlation_id: str | None = None,
    ) -> Envelope:
        return cls(
            event_id=event_id,
            type=body.type,
            version=body.version,
            job_id=job_id,
            correlation_id=correlation_id or job_id,
            created_at=datetime.now(UTC),
            producer=producer,
            body=body,
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse a message; anything malformed is a permanent error (never retried)."""
        try:
            return cls.model_validate_json(data)
        except ValueError as exc:
            raise InvalidInputError(f"not a seriesflow event: {_first_error(exc)}") from exc


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        location = ".".join(str(p) for p in first.get("loc", ()))
        return f"{location}: {first.get('msg')}" if location else str(first.get("msg"))
    return str(exc).splitlines()[0]


ENVELOPE_ADAPTER: TypeAdapter[Envelope] = TypeAdapter(Envelope)
