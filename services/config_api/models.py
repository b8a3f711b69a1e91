"""Request and response bodies of seriesflow's own API (``/api/v1``), in camelCase JSON.

Each resource converts to and from the *spec* the repository stores, which uses the
configuration file's keys (``ae-title``, ``host-ip``…).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.config_api.repository import StoredObject


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    revision: str = Field(description="Give it back (If-Match or 'revision') to update")
    createdAt: str
    updatedAt: str
    updatedBy: str
    origin: Literal["store", "file"] = Field(
        default="store",
        description="store: created through the API; file: defined in the configuration "
        "file or pipelines folder (read-only here)",
    )
    overridesFile: bool = Field(
        default=False, description="Replaces the configuration file's entry (explicit, audited)"
    )


def _meta(stored: StoredObject) -> dict[str, Any]:
    return {
        "revision": stored.revision,
        "createdAt": stored.created_at,
        "updatedAt": stored.updated_at,
        "updatedBy": stored.updated_by,
        "origin": stored.origin,
        "overridesFile": stored.overrides_file,
    }


# -- AE titles ------------------------------------------------------------------------


class AETitleIn(_In):
    name: str | None = Field(default=None, description="Defaults to the AE title")
    aeTitle: str = Field(description="At most 16 characters, no backslash")
    pipeline: str | None = Field(default=None, description="Pipeline name or Clara pipeline ID")
    timeout: float = Field(default=0, description="Seconds of silence before a job starts")
    overwriteSameInstance: bool = False
    ignoredSopClasses: list[str] = Field(default_factory=list)
    grouping: Literal["association", "study"] = Field(
        default="association", description="A job per association, or per StudyInstanceUID"
    )
    duplicates: Literal["keep-first", "overwrite", "reject"] | None = Field(
        default=None, description="A SOP Instance UID received again with different content"
    )
    requireTls: bool = Field(
        default=False, description="Associations to this AE title on the DICOM TLS port only"
    )
    revision: str | None = Field(default=None, description="For updates (or If-Match)")

    def spec(self) -> dict[str, Any]:
        return {
            "ae-title": self.aeTitle,
            "pipeline": self.pipeline,
            "timeout": self.timeout,
            "overwrite-same-instance": self.overwriteSameInstance,
            "ignored-sop-classes": self.ignoredSopClasses,
            "grouping": self.grouping,
            "duplicates": self.duplicates,
            "require-tls": self.requireTls,
        }


class AETitleOut(_Out):
    name: str
    aeTitle: str
    pipeline: str | None
    timeout: float
    overwriteSameInstance: bool
    ignoredSopClasses: list[str]
    grouping: str = "association"
    duplicates: str | None = None
    requireTls: bool = False

    @classmethod
    def of(cls, stored: StoredObject) -> AETitleOut:
        spec = stored.spec
        return cls(
            name=stored.name,
            aeTitle=spec["ae-title"],
            pipeline=spec.get("pipeline"),
            timeout=spec.get("timeout", 0),
            overwriteSameInstance=spec.get("overwrite-same-instance", False),
            ignoredSopClasses=list(spec.get("ignored-sop-classes") or ()),
            grouping=spec.get("grouping") or "association",
            duplicates=spec.get("duplicates"),
            requireTls=bool(spec.get("require-tls", False)),
            **_meta(stored),
        )


# -- sources --------------------------------------------------------------------------


class SourceIn(_In):
    name: str | None = Field(default=None, description="Defaults to the AE title")
    aeTitle: str
    hostIp: str = Field(description="IP address or host name")
    revision: str | None = None

    def spec(self) -> dict[str, Any]:
        return {"ae-title": self.aeTitle, "host-ip": self.hostIp}


class SourceOut(_Out):
    name: str
    aeTitle: str
    hostIp: str

    @classmethod
    def of(cls, stored: StoredObject) -> SourceOut:
        return cls(
            name=stored.name,
            aeTitle=stored.spec["ae-title"],
            hostIp=stored.spec["host-ip"],
            **_meta(stored),
        )


# -- destinations ---------------------------------------------------------------------


class DestinationTls(_In):
    """DICOM TLS to a destination (paths are on the exporter's host)."""

    caCertificates: str | None = Field(
        default=None,
        description="CA certificates (PEM) the destination's certificate is checked "
        "against; default: the system's",
    )
    certificate: str | None = Field(default=None, description="Our client certificate (PEM)")
    privateKey: str | None = Field(default=None, description="Its private key (PEM)")
    serverName: str | None = Field(
        default=None, description="The name the destination's certificate must carry"
    )
    verifyHostname: bool = True

    def spec(self) -> dict[str, Any]:
        return {
            "ca-certificates": self.caCertificates,
            "certificate": self.certificate,
            "private-key": self.privateKey,
            "server-name": self.serverName,
            "verify-hostname": self.verifyHostname,
        }

    @classmethod
    def of(cls, spec: dict[str, Any] | None) -> DestinationTls | None:
        if not spec:
            return None
        return cls(
            caCertificates=spec.get("ca-certificates"),
            certificate=spec.get("certificate"),
            privateKey=spec.get("private-key"),
            serverName=spec.get("server-name"),
            verifyHostname=spec.get("verify-hostname", True),
        )


class DestinationIn(_In):
    name: str | None = Field(default=None, description="Required when creating")
    aeTitle: str
    hostIp: str
    port: int
    tls: DestinationTls | None = Field(default=None, description="Send over DICOM TLS")
    revision: str | None = None

    def spec(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "ae-title": self.aeTitle,
            "host-ip": self.hostIp,
            "port": self.port,
            "tls": None if self.tls is None else self.tls.spec(),
        }


class DestinationOut(_Out):
    name: str
    aeTitle: str
    hostIp: str
    port: int
    tls: DestinationTls | None = None

    @classmethod
    def of(cls, stored: StoredObject) -> DestinationOut:
        return cls(
            name=stored.name,
            aeTitle=stored.spec["ae-title"],
            hostIp=stored.spec["host-ip"],
            port=stored.spec["port"],
            tls=DestinationTls.of(stored.spec.get("tls")),
            **_meta(stored),
        )


# -- pipelines ------------------------------------------------------------------------


class PipelineOut(_Out):
    name: str
    definition: dict[str, Any] = Field(description="The pipeline document (docs/pipelines.md)")

    @classmethod
    def of(cls, stored: StoredObject) -> PipelineOut:
        return cls(name=stored.name, definition=stored.spec, **_meta(stored))


# -- rules, echo, jobs ----------------------------------------------------------------


class RulesValid(BaseModel):
    valid: bool
    source: str
    selections: list[str]
    emptyRules: bool


class ExplainIn(_In):
    jobId: str = Field(description="A job whose parser outputs are stored")
    rules: dict[str, Any] | None = Field(default=None, description="Rules to try")
    pipeline: str | None = Field(default=None, description="Or: a stored pipeline's rules")


class ExplainOut(BaseModel):
    jobId: str
    explanation: dict[str, Any]
    text: str


class EchoOut(BaseModel):
    destination: str
    aeTitle: str
    hostIp: str
    port: int
    success: bool
    status: str | None = Field(description="DIMSE status of the C-ECHO, e.g. 0x0000")
    message: str


class JobSummary(BaseModel):
    jobId: str
    pipeline: str | None = Field(description="From the job's manifest")
    stage: str = Field(description="The furthest of received, parsed, selected (or none)")
    state: str = Field(description="running, completed or failed")
    created: str
    updated: str
    exports: int = Field(description="Export requests (one per route destination)")
    exportsDone: int = Field(description="Exports with an outcome (export.completed)")


class JobEvent(BaseModel):
    stage: str
    updated: str
    type: str | None = None
    createdAt: str | None = None
    body: dict[str, Any] | None = None


class JobError(BaseModel):
    stage: str
    reason: str


class JobDetail(BaseModel):
    jobId: str
    pipeline: str | None
    stage: str
    state: str
    manifest: bool
    events: list[JobEvent]
    outputs: list[str]
    errors: list[JobError]


class ErrorBody(BaseModel):
    error: str
    status: int
    message: str


class Health(BaseModel):
    status: str
