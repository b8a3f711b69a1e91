"""Operator-mode settings, read once from the environment (Clara's variable names)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import InvalidInputError
from shared.volumes.kinds import ScalingMode
from shared.volumes.writer import ImageFormat, parse_image_format


class OperatorSettings(BaseSettings):
    """What a Clara pipeline sets for the DICOM Parser and Series Selector operators."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    image_format: ImageFormat = Field(default="mhd", alias="NVIDIA_CLARA_IMAGE_FORMAT")
    selection_rules_file: str | None = Field(
        default=None, alias="NVIDIA_CLARA_SELECTION_RULES_FILE"
    )
    selection_rules_base64: str | None = Field(
        default=None, alias="NVIDIA_CLARA_SELECTION_RULES_BASE64"
    )
    min_slices: int = Field(default=2, ge=2, alias="SERIESFLOW_MIN_SLICES")
    resample: bool = Field(default=True, alias="SERIESFLOW_RESAMPLE")
    """Resample tilted and unevenly spaced stacks; false refuses them (gantry_tilt,
    inconsistent_spacing), as before."""
    scaling: ScalingMode = Field(default="display", alias="SERIESFLOW_SCALING")
    previews: bool = Field(default=True, alias="SERIESFLOW_PREVIEWS")
    """A PNG of each volume's three middle slices beside it (shared.volumes.preview)."""
    processes: int = Field(default=1, ge=1, alias="SERIESFLOW_PROCESSES")
    """Processes converting a folder's series at once: 1 (the default), or 2 to use a second
    CPU where there is one, for more memory (shared.operator.processes)."""
    log_dir: str | None = Field(default=None, alias="SERIESFLOW_LOG_DIR")
    log_level: str = Field(default="INFO", alias="SERIESFLOW_LOG_LEVEL")
    log_phi: bool = Field(default=False, alias="SERIESFLOW_LOG_PHI")

    @field_validator("image_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return parse_image_format(value, "NVIDIA_CLARA_IMAGE_FORMAT")
            except InvalidInputError as exc:
                raise ValueError(exc.reason) from exc
        return value
