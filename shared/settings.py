"""Settings every service reads from its environment, built once at start.

Each service derives its own settings class from :class:`ServiceSettings`; the names are
the ones every deployment sets (``SERIESFLOW_*``). Secrets are :class:`SecretStr` so they
never appear in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.durations import Duration


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERIESFLOW_", extra="ignore")

    config: Path | None = Field(
        default=None, description="YAML configuration; the Clara DICOM Adapter's file loads as-is"
    )
    pipelines: Path | None = Field(default=None, description="Folder of pipeline definitions")
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F")
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("seriesflow")
    s3_secret_key: SecretStr = SecretStr("seriesflow-secret")
    s3_bucket: str = "seriesflow"
    s3_secure: bool = False
    s3_region: str | None = None
    log_level: str = "INFO"
    log_dir: Path | None = None
    log_phi: bool = False
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of GET /metrics (docs/metrics.md); 0: off"
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics listens on")
    work_dir: Path | None = Field(
        default=None,
        description="Local folder for temporary work folders (patient data); default: "
        "'seriesflow' in the system temporary folder (see shared/workdir.py)",
    )
    delivery_limit: int = Field(default=5, ge=1, description="Deliveries before dead-lettering")
    retry_backoff_seconds: float = Field(default=1.0, ge=0.0)
    retry_backoff_max_seconds: float = Field(default=30.0, ge=0.0)
    # retention (shared/retention.py, docs/retention.md): seconds, or 15m / 36h / 7d; 0: never
    retention_completed: Duration = Field(
        default=7 * 86400.0, description="How long a completed job's objects are kept"
    )
    retention_failed: Duration = Field(
        default=30 * 86400.0,
        description="How long a failed, dead-lettered or unfinished job's objects are kept",
    )
    retention_interval: Duration = Field(
        default=3600.0, description="How often the config API service purges; 0: never"
    )
