"""The DICOM configuration: AE titles, sources, destinations, pipeline mappings.

The Clara DICOM Adapter's configuration file loads as-is (``dicom > scp / scu``,
``pipeline-mappings``, ``storage``, ``services``): keys are the same, hyphenated.
seriesflow's own additions sit beside them (``max-pdu-size``, ``incoming-ttl``, per-AE
``pipeline``). Everything is validated when loaded: a bad file is refused with a message
that says where, and never half-applied.

Keys are checked strictly (:func:`check_config`). A key seriesflow does not know stops
start-up, named by its path, with the known key it most resembles
(``dicom.scp.reject-unknown-source: unknown key; did you mean reject-unknown-sources?``):
an ignored misspelling of a security setting would silently open the SCP. Keys Clara
documents that seriesflow has no use for (``processors``, ``log-dimse-datasets``,
``log-data-pdus``, ``services``, ``storage.temporary``) are accepted and reported once at
start as not used (:attr:`ConfigReport.notices`).

``read-aetitles-from-crd``, ``read-sources-from-crd`` and ``read-destinations-from-crd``
keep Clara's meaning (:meth:`SeriesflowConfig.origin`): ``true``, the file's list is not
used and the entries come from the REST API only; ``false``, the file's list only. Absent
(seriesflow's default, where Clara's was ``true``): both, because a file that lists entries
without the flag (as Clara's own sample does) means them to be used; how the two merge
(the file's entry wins unless a stored one overrides it explicitly) is
:mod:`shared.configstore`'s.
"""

from __future__ import annotations

import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import InvalidInputError
from shared.identifiers import validate_name
from shared.logs import get_logger
from shared.strict_keys import unknown_key

log = get_logger("config")

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


def validate_ae_title(value: str) -> str:
    """At most 16 printable characters, no backslash, not blank (PS3.5 AE VR)."""
    if not isinstance(value, str) or not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f"AE title {value!r} must be 1 to 16 printable characters, not blank, no backslash"
        )
    return value.strip()


def validate_host(value: str) -> str:
    value = value.strip()
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not re.match(
        r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
        value,
    ):
        raise ValueError(f"host {value!r} is neither an IP address nor a host name")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    clara_unused: ClassVar[dict[str, str]] = {}
    """Keys Clara documents here that seriesflow accepts and does not use: key -> why."""


class AETitleConfig(_Model):
    """One of our AE titles (Clara: a Clara AE title)."""

    ae_title: str = Field(alias="ae-title")
    timeout: float = Field(
        default=0,
        ge=0,
        description="Seconds without instances before a job starts; 0: each association is a job",
    )
    overwrite_same_instance: bool = Field(default=False, alias="overwrite-same-instance")
    ignored_sop_classes: tuple[str, ...] = Field(default=(), alias="ignored-sop-classes")
    pipeline: str | None = Field(default=None, description="seriesflow: the pipeline to run")
    require_tls: bool = Field(
        default=False,
        alias="require-tls",
        description="seriesflow: associations to this AE title only on the DICOM TLS port",
    )
    grouping: Literal["association", "study"] = Field(
        default="association",
        description="seriesflow: a job per association (Clara, with timeout) or per "
        "StudyInstanceUID, released after timeout seconds without an instance of the study "
        "(5 when timeout is 0); see docs/receiver.md",
    )
    duplicates: Literal["keep-first", "overwrite", "reject"] | None = Field(
        default=None,
        description="seriesflow: a SOP Instance UID received again with different content; "
        "default: overwrite if overwrite-same-instance, else keep-first",
    )

    clara_unused: ClassVar[dict[str, str]] = {
        "processors": "a job always starts the AE title's pipeline (Clara's JobProcessor)",
    }

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class SourceConfig(_Model):
    host_ip: str = Field(alias="host-ip")
    ae_title: str = Field(alias="ae-title")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))
    _host = field_validator("host_ip")(classmethod(lambda cls, v: validate_host(v)))


class ScpTlsConfig(_Model):
    """seriesflow: DICOM TLS on its own port (docs/security.md, "DICOM TLS")."""

    port: int = Field(default=2762, ge=1, le=65535)
    certificate: Path = Field(description="The server's certificate chain (PEM)")
    private_key: Path = Field(alias="private-key", description="Its private key (PEM)")
    verify_clients: bool = Field(
        default=False,
        alias="verify-clients",
        description="Require a client certificate issued by ca-certificates",
    )
    ca_certificates: Path | None = Field(
        default=None,
        alias="ca-certificates",
        description="The CA certificates (PEM) client certificates are checked against",
    )

    @model_validator(mode="after")
    def _clients(self) -> ScpTlsConfig:
        if self.verify_clients and self.ca_certificates is None:
            raise ValueError("verify-clients needs ca-certificates")
        return self


class DestinationTlsConfig(_Model):
    """seriesflow: DICOM TLS to a destination (docs/security.md, "DICOM TLS")."""

    ca_certificates: Path | None = Field(
        default=None,
        alias="ca-certificates",
        description="CA certificates (PEM) the destination's certificate is checked "
        "against; default: the system's",
    )
    certificate: Path | None = Field(default=None, description="Our client certificate (PEM)")
    private_key: Path | None = Field(default=None, alias="private-key")
    server_name: str | None = Field(
        default=None,
        alias="server-name",
        description="The name the destination's certificate must carry; default: host-ip",
    )
    verify_hostname: bool = Field(default=True, alias="verify-hostname")

    @model_validator(mode="after")
    def _pair(self) -> DestinationTlsConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private-key go together")
        return self


class DestinationConfig(_Model):
    name: str
    host_ip: str = Field(alias="host-ip")
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(alias="ae-title")
    tls: DestinationTlsConfig | None = Field(
        default=None, description="seriesflow: send over DICOM TLS"
    )

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))
    _host = field_validator("host_ip")(classmethod(lambda cls, v: validate_host(v)))
    _name = field_validator("name")(classmethod(lambda cls, v: validate_name(v, "destination")))


class VerificationConfig(_Model):
    enabled: bool = True
    transfer_syntaxes: tuple[str, ...] = Field(default=(), alias="transfer-syntaxes")


class ScpConfig(_Model):
    port: int = Field(default=104, ge=1, le=65535)
    host: str = Field(default="0.0.0.0", description="seriesflow: address to listen on")
    ae_titles: tuple[AETitleConfig, ...] = Field(
        default=(AETitleConfig.model_validate({"ae-title": "ClaraSCP"}),), alias="ae-titles"
    )
    max_associations: int = Field(default=2, ge=1, alias="max-associations")
    verification: VerificationConfig = VerificationConfig()
    reject_unknown_sources: bool = Field(default=True, alias="reject-unknown-sources")
    sources: tuple[SourceConfig, ...] = ()
    max_pdu_size: int = Field(
        default=262144,
        ge=4096,
        le=16777216,
        alias="max-pdu-size",
        description="seriesflow: the longest P-DATA-TF PDU accepted, as announced in "
        "A-ASSOCIATE-AC; longer ones abort the association",
    )
    max_connections: int = Field(
        default=100,
        ge=1,
        alias="max-connections",
        description="seriesflow: open connections at once, associated or not",
    )
    max_connections_per_address: int = Field(
        default=8,
        ge=1,
        alias="max-connections-per-address",
        description="seriesflow: open connections at once from one peer address",
    )
    tls: ScpTlsConfig | None = Field(
        default=None, description="seriesflow: DICOM TLS on its own port"
    )
    incoming_ttl: float = Field(
        default=3600,
        gt=0,
        alias="incoming-ttl",
        description="seriesflow: seconds before instances that belong to no job are deleted",
    )
    read_aetitles_from_crd: bool | None = Field(
        default=None,
        alias="read-aetitles-from-crd",
        description="true: AE titles from the REST API only; false: the file's only; absent: both",
    )
    read_sources_from_crd: bool | None = Field(
        default=None,
        alias="read-sources-from-crd",
        description="true: sources from the REST API only; false: the file's only; absent: both",
    )

    clara_unused: ClassVar[dict[str, str]] = {
        "log-dimse-datasets": "seriesflow never logs datasets (they carry patient data)",
        "processors": "a job always starts the AE title's pipeline (Clara's JobProcessor)",
    }

    @model_validator(mode="after")
    def _unique(self) -> ScpConfig:
        titles = [a.ae_title for a in self.ae_titles]
        if len(set(titles)) != len(titles):
            raise ValueError("ae-titles lists an AE title twice")
        if self.tls is not None and self.tls.port == self.port:
            raise ValueError("tls > port must differ from port")
        return self

    @model_validator(mode="after")
    def _from_crd(self) -> ScpConfig:
        """Clara: when read-*-from-crd is true, the file's list is not used."""
        if self.read_aetitles_from_crd and self.ae_titles:
            object.__setattr__(self, "ae_titles", ())
        if self.read_sources_from_crd and self.sources:
            object.__setattr__(self, "sources", ())
        return self


class ScuConfig(_Model):
    ae_title: str = Field(default="ClaraSCU", alias="ae-title")
    max_associations: int = Field(default=2, ge=1, alias="max-associations")
    destinations: tuple[DestinationConfig, ...] = ()
    read_destinations_from_crd: bool | None = Field(
        default=None,
        alias="read-destinations-from-crd",
        description="true: destinations from the REST API only; false: the file's only; "
        "absent: both",
    )

    clara_unused: ClassVar[dict[str, str]] = {
        "log-dimse-datasets": "seriesflow never logs datasets (they carry patient data)",
        "log-data-pdus": "seriesflow does not log PDUs",
    }

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))

    @model_validator(mode="after")
    def _unique(self) -> ScuConfig:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destinations lists a name twice")
        return self

    @model_validator(mode="after")
    def _from_crd(self) -> ScuConfig:
        """Clara: when read-destinations-from-crd is true, the file's list is not used."""
        if self.read_destinations_from_crd and self.destinations:
            object.__setattr__(self, "destinations", ())
        return self


class DicomConfig(_Model):
    scp: ScpConfig = ScpConfig()
    scu: ScuConfig = ScuConfig()


class PipelineMapping(_Model):
    name: str
    clara_ae_title: str = Field(alias="clara-ae-title")
    pipeline_id: str | None = Field(default=None, alias="pipeline-id")

    _ae = field_validator("clara_ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class StorageConfig(_Model):
    """Clara's ``storage``: where the DICOM Adapter kept received instances on disk."""

    clara_unused: ClassVar[dict[str, str]] = {
        "temporary": "received instances go to the object store (SERIESFLOW_S3_*), never "
        "to a local folder; the parser's work folder is SERIESFLOW_WORK_DIR",
    }


class ServicesConfig(_Model):
    """Clara's ``services``: the Clara platform and Results Service endpoints."""

    clara_unused: ClassVar[dict[str, str]] = {
        "platform-endpoint": "jobs are events on RabbitMQ (SERIESFLOW_AMQP_URL)",
        "results-service-endpoint": "results are sent by the exporter, routed by pipelines",
    }


Kind = Literal["ae-titles", "sources", "destinations"]
Origin = Literal["file", "store", "both"]


class SeriesflowConfig(_Model):
    """The whole configuration file."""

    dicom: DicomConfig = DicomConfig()
    pipeline_mappings: tuple[PipelineMapping, ...] = Field(default=(), alias="pipeline-mappings")
    storage: StorageConfig = StorageConfig()
    services: ServicesConfig = ServicesConfig()

    def origin(self, kind: Kind) -> Origin:
        """Where ``kind``'s entries come from (Clara's ``read-*-from-crd``).

        ``"store"`` (flag true): the REST API's stored entries only; the file's list was
        dropped when loaded. ``"file"`` (flag false): the file's entries only; stored ones
        are not used. ``"both"`` (flag absent): the file's entries and the stored ones
        (merged by :class:`shared.configstore.LiveConfig`).
        """
        flag = {
            "ae-titles": self.dicom.scp.read_aetitles_from_crd,
            "sources": self.dicom.scp.read_sources_from_crd,
            "destinations": self.dicom.scu.read_destinations_from_crd,
        }[kind]
        return "both" if flag is None else "store" if flag else "file"

    def pipeline_for(self, ae_title: str) -> str | None:
        """The pipeline an AE title runs: its own ``pipeline``, else its Clara mapping."""
        for entry in self.dicom.scp.ae_titles:
            if entry.ae_title == ae_title and entry.pipeline:
                return entry.pipeline
        for mapping in self.pipeline_mappings:
            if mapping.clara_ae_title == ae_title:
                return mapping.pipeline_id or mapping.name
        return None

    def ae_title(self, title: str) -> AETitleConfig | None:
        return next((a for a in self.dicom.scp.ae_titles if a.ae_title == title), None)

    def destination(self, name: str) -> DestinationConfig | None:
        return next((d for d in self.dicom.scu.destinations if d.name == name), None)


@dataclass(frozen=True)
class ConfigReport:
    """What :func:`check_config` found: ``errors`` stop start-up, ``notices`` are logged."""

    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds, and whether it holds a list of them."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model, many = _model_of(arg)
            if model is not None:
                return model, many
        return None, False
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1:
            model, _ = _model_of(args[0])
            return model, True
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _check(data: Any, model: type[BaseModel], where: str, report: ConfigReport) -> None:
    if not isinstance(data, dict):
        return  # the model's own validation names a wrong type
    unused: dict[str, str] = getattr(model, "clara_unused", {})
    fields = {}
    for name, info in model.model_fields.items():
        fields[info.alias or name] = info
        fields[name] = info
    known = set(fields) | set(unused)
    report.errors.extend(_unknown(data, known, where, model, fields))
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key in unused:
            report.notices.append(f"{path}: accepted from Clara, not used: {unused[key]}")
        elif key in fields:
            sub, many = _model_of(fields[key].annotation)
            if sub is None:
                continue
            if many and isinstance(value, list):
                for index, item in enumerate(value):
                    _check(item, sub, f"{path}[{index}]", report)
            elif not many:
                _check(value, sub, path, report)


def _unknown(
    data: dict[Any, Any],
    known: set[str],
    where: str,
    model: type[BaseModel],
    fields: dict[str, Any],
) -> list[str]:
    # suggest only the hyphenated spellings the documentation uses
    shown = {k for k in known if k not in model.model_fields or not fields[k].alias}
    return [unknown_key(where, key, shown) for key in data if key not in known]


_CRD_LISTS = (
    ("dicom.scp", "read-aetitles-from-crd", "ae-titles", "AE titles"),
    ("dicom.scp", "read-sources-from-crd", "sources", "sources"),
    ("dicom.scu", "read-destinations-from-crd", "destinations", "destinations"),
)


def check_config(data: Any) -> ConfigReport:
    """Every unknown key (an error) and every accepted-but-unused Clara key (a notice).

    Also notes the lists that ``read-*-from-crd: true`` sets aside, as Clara did.
    """
    report = ConfigReport()
    if not isinstance(data, dict):
        return report
    _check(data, SeriesflowConfig, "", report)
    dicom = data.get("dicom")
    for section, flag, key, what in _CRD_LISTS:
        part = dicom.get(section.split(".")[1]) if isinstance(dicom, dict) else None
        if isinstance(part, dict) and part.get(flag) is True and part.get(key):
            report.notices.append(
                f"{section}.{key}: not used, because {flag} is true: {what} come from the "
                f"REST API only"
            )
    return report


def parse_config(data: Any, source: str = "configuration") -> SeriesflowConfig:
    """The configuration in ``data``; InvalidInputError naming every unknown key's path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: must be a mapping with a 'dicom' section")
    report = check_config(data)
    if report.errors:
        raise InvalidInputError(f"{source}: " + "; ".join(report.errors))
    try:
        config = SeriesflowConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = " > ".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(f"{source}: {where}: {message}") from exc
    for notice in report.notices:
        log.warning(f"configuration: {notice}", extra={"source": source})
    return config


def load_config(path: Path | None) -> SeriesflowConfig:
    """The configuration file at ``path``; defaults when there is none."""
    if path is None:
        return SeriesflowConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read configuration {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, str(path))
