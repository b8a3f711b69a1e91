"""The receiver's settings (``SERIESFLOW_*``, on top of every service's)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class ReceiverSettings(ServiceSettings):
    dicom_network_timeout_seconds: float = Field(
        default=60.0, gt=0, description="An association idle this long is aborted"
    )
    dicom_acse_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait for an association request or release"
    )
    dicom_dimse_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait for the rest of a DIMSE message"
    )
    live_config_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the configuration the REST API stores is checked for changes",
    )
    association_check_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often associations that ended without release or abort are looked for",
    )
    orphan_sweep_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often incoming/ is swept for orphans and unpublished jobs",
    )
    recovery_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A released association another process left unpublished is adopted "
        "this long after its AE title's timeout has passed",
    )
    store_attempts_at_start: int = Field(
        default=3, ge=1, description="Tries to reach the object store before listening anyway"
    )
    store_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest the object store may take no spooled file while some wait "
        "(counted from the oldest one's spooling if later); past it, C-STORE answers "
        "Refused (0xA700) until the store takes one",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Local folder of the spool (services/receiver/spool.py): instances are "
        "fsynced here before success and uploaded to the object store behind; must survive "
        "a restart (a persistent volume). Default: $XDG_STATE_HOME/seriesflow/receiver-spool "
        "(~/.local/state/... without XDG_STATE_HOME)",
    )
    spool_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024 * 1024,
        description="Largest size of the files waiting in the spool for upload; past it, "
        "C-STORE answers Refused (0xA700)",
    )
    spool_upload_threads: int = Field(
        default=8, ge=1, le=64, description="Threads uploading spooled instances to the store"
    )
    drain_seconds: float = Field(
        default=25.0,
        ge=0,
        description="On SIGTERM, how long open associations may go on (no new ones are "
        "accepted) before they are ended and their instances quarantined",
    )
    quarantine_seconds: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="How long instances of an association that ended without A-RELEASE are "
        "kept in quarantine (for an operator to release as a job or delete)",
    )
    quarantine_check_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often quarantine/ is checked for operator releases and expiry",
    )

    # DICOMweb STOW-RS (services/receiver/stow.py, docs/receiver.md "DICOMweb STOW-RS")
    stow_port: int = Field(default=0, ge=0, le=65535, description="Port of STOW-RS; 0: off")
    stow_host: str = Field(
        default="127.0.0.1",
        description="Address STOW-RS listens on; anything but loopback needs a token",
    )
    stow_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Largest STOW-RS request body (held in memory while its instances are "
        "checked and stored); a larger one is answered 413 before it is read",
    )
    stow_max_requests: int = Field(
        default=2,
        ge=1,
        description="STOW-RS requests handled at once (each holds its body in memory); one "
        "more is answered 503 with Retry-After before its body is read",
    )
    api_token: SecretStr | None = Field(
        default=None, description="STOW-RS bearer token, the config API's (named 'default')"
    )
    api_tokens: SecretStr | None = Field(
        default=None, description="STOW-RS named bearer tokens, the config API's"
    )


def receiver_settings(settings: ServiceSettings) -> ReceiverSettings:
    """``settings`` as ReceiverSettings (fields it lacks come from the environment)."""
    if isinstance(settings, ReceiverSettings):
        return settings
    return ReceiverSettings(**settings.model_dump())
