"""The parser service's settings (``SERIESFLOW_*``, on top of every service's)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings
from shared.volumes.kinds import ScalingMode


class ParserSettings(ServiceSettings):
    min_slices: int = Field(
        default=2, ge=2, description="Fewest slices a stack needs to become a volume"
    )
    resample: bool = Field(
        default=True,
        description="Resample tilted and unevenly spaced stacks onto a regular grid; "
        "false refuses them (gantry_tilt, inconsistent_spacing)",
    )
    scaling: ScalingMode = Field(
        default="display",
        description="display: RescaleSlope/Intercept values; precise: Philips floating-point "
        "values (private scale slope) where present",
    )
    work_dir: Path | None = Field(
        default=None, description="Where jobs are parsed, in a temporary folder each"
    )
    transfer_workers: int = Field(
        default=8, ge=1, le=64, description="Parallel downloads and uploads per job"
    )


def parser_settings(settings: ServiceSettings) -> ParserSettings:
    """``settings`` as ParserSettings (fields it lacks come from the environment)."""
    if isinstance(settings, ParserSettings):
        return settings
    return ParserSettings(**settings.model_dump())
