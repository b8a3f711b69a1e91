"""The DICOM configuration: AE titles, sources, destinations, pipeline mappings.

The Clara DICOM Adapter's configuration file loads as-is (``dicom > scp / scu``,
``pipeline-mappings``, ``storage``, ``services``): keys are the same, hyphenated, and keys
seriesflow has no use for (``read-*-from-crd``, ``processors``, ``services``,
``log-data-pdus``…) are accepted and ignored. seriesflow's own additions sit beside them
(``max-pdu-size``, ``incoming-ttl``, per-AE ``pipeline``). Everything is validated when
loaded: a bad file is refused with a message that says where, and never half-applied.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import InvalidInputError
from shared.identifiers import validate_name

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

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class SourceConfig(_Model):
    host_ip: str = Field(alias="host-ip")
    ae_title: str = Field(alias="ae-title")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))
    _host = field_validator("host_ip")(classmethod(lambda cls, v: validate_host(v)))


class DestinationConfig(_Model):
    name: str
    host_ip: str = Field(alias="host-ip")
    port: int = Field(ge=1, le=65535)
    ae_title: str = Field(alias="ae-title")

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
        default=0, ge=0, alias="max-pdu-size", description="seriesflow: 0 means unlimited"
    )
    incoming_ttl: float = Field(
        default=3600,
        gt=0,
        alias="incoming-ttl",
        description="seriesflow: seconds before instances that belong to no job are deleted",
    )

    @model_validator(mode="after")
    def _unique(self) -> ScpConfig:
        titles = [a.ae_title for a in self.ae_titles]
        if len(set(titles)) != len(titles):
            raise ValueError("ae-titles lists an AE title twice")
        return self


class ScuConfig(_Model):
    ae_title: str = Field(default="ClaraSCU", alias="ae-title")
    max_associations: int = Field(default=2, ge=1, alias="max-associations")
    destinations: tuple[DestinationConfig, ...] = ()

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))

    @model_validator(mode="after")
    def _unique(self) -> ScuConfig:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destinations lists a name twice")
        return self


class DicomConfig(_Model):
    scp: ScpConfig = ScpConfig()
    scu: ScuConfig = ScuConfig()


class PipelineMapping(_Model):
    name: str
    clara_ae_title: str = Field(alias="clara-ae-title")
    pipeline_id: str | None = Field(default=None, alias="pipeline-id")

    _ae = field_validator("clara_ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class SeriesflowConfig(_Model):
    """The whole configuration file."""

    dicom: DicomConfig = DicomConfig()
    pipeline_mappings: tuple[PipelineMapping, ...] = Field(default=(), alias="pipeline-mappings")

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


def parse_config(data: Any, source: str = "configuration") -> SeriesflowConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: must be a mapping with a 'dicom' section")
    try:
        return SeriesflowConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = " > ".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(f"{source}: {where}: {message}") from exc


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
