"""The selector service's settings (``SERIESFLOW_*``): those of every service."""

from __future__ import annotations

from shared.settings import ServiceSettings


class SelectorSettings(ServiceSettings):
    """Nothing beyond the common settings: rules and routes come from the pipelines."""


def selector_settings(settings: ServiceSettings) -> SelectorSettings:
    """``settings`` as SelectorSettings."""
    if isinstance(settings, SelectorSettings):
        return settings
    return SelectorSettings(**settings.model_dump())
