"""The exporter service's settings (``SERIESFLOW_*``, on top of every service's)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class ExporterSettings(ServiceSettings):
    exporter_workers: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Exports (associations) at once per process; default: scu max-associations",
    )
    exporter_fetch_workers: int = Field(
        default=4, ge=1, le=64, description="Parallel downloads from the object store"
    )
    exporter_prefetch: int = Field(
        default=8, ge=1, le=256, description="Files downloaded ahead of the one being sent"
    )
    exporter_prefetch_mib: int = Field(
        default=32,
        ge=1,
        le=4096,
        description=(
            "MiB of files downloaded ahead: waiting in memory to be sent, or being "
            "downloaded (each counted as large as the largest so far)"
        ),
    )
    exporter_file_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Re-associations and re-sends per file after a transient failure",
    )
    exporter_associations: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description=(
            "Associations one export sends over at once; default: up to scu "
            "max-associations, shared by the exports at once"
        ),
    )
    exporter_state_lag: int = Field(
        default=16,
        ge=0,
        le=64,
        description=(
            "Confirmed files whose record may still be in flight while the next file is "
            "sent; 0: each confirmation is stored before that association's next C-STORE"
        ),
    )
    exporter_max_pdu: int = Field(
        default=16382,
        ge=0,
        description="Largest PDU we accept from the destination (0: unlimited)",
    )
    exporter_connect_timeout: float = Field(default=10.0, gt=0)
    exporter_acse_timeout: float = Field(default=30.0, gt=0)
    exporter_dimse_timeout: float = Field(default=60.0, gt=0)
    exporter_network_timeout: float = Field(default=60.0, gt=0)


def exporter_settings(settings: ServiceSettings) -> ExporterSettings:
    """``settings`` as ExporterSettings (fields it lacks come from the environment)."""
    if isinstance(settings, ExporterSettings):
        return settings
    return ExporterSettings(**settings.model_dump())
