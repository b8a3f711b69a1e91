"""The config API's settings (``SERIESFLOW_*``, on top of every service's)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ConfigApiSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="SERIESFLOW_", extra="ignore", populate_by_name=True
    )

    host: str = Field(
        default="127.0.0.1",
        validation_alias="SERIESFLOW_API_HOST",
        description="Address to listen on; anything but loopback needs a token",
    )
    port: int = Field(default=5000, ge=1, le=65535, validation_alias="SERIESFLOW_API_PORT")
    api_token: SecretStr | None = Field(
        default=None, description="One bearer token (its name in the audit log: 'default')"
    )
    api_tokens: SecretStr | None = Field(
        default=None, description="Named bearer tokens: 'name1:token1,name2:token2'"
    )
    api_echo_timeout: float = Field(
        default=5.0, gt=0, le=60, description="Seconds a C-ECHO of a destination may take"
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body accepted; a larger one is answered 413 unread",
    )
    api_console_session_seconds: int = Field(
        default=8 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="How long a console sign-in lasts (the session cookie's lifetime)",
    )
    api_console_secure_cookie: bool = Field(
        default=False,
        description=(
            "Always mark the console's session cookie Secure (set it when TLS ends at a "
            "proxy in front of the API; over https the cookie is Secure anyway)"
        ),
    )
    api_identifier_readers: str = Field(
        default="",
        description=(
            "Token names (comma-separated; 'anonymous-loopback' for the tokenless loopback "
            "caller) that may ask for patient identifiers with ?identifiers=true"
        ),
    )


def config_api_settings(settings: ServiceSettings) -> ConfigApiSettings:
    """``settings`` as ConfigApiSettings (fields it lacks come from the environment)."""
    if isinstance(settings, ConfigApiSettings):
        return settings
    return ConfigApiSettings(**settings.model_dump())
