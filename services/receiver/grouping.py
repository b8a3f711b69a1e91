"""Which job an instance goes to: its group, and how long the group waits (see
:mod:`services.receiver.job`)."""

from __future__ import annotations

from services.receiver.job import Group
from shared.config import AETitleConfig

STUDY_QUIET_SECONDS = 5.0
"""A study's quiet period when its AE title groups by study and has ``timeout: 0``."""


def group_for(
    config: AETitleConfig, association_id: str, calling_ae_title: str, study_instance_uid: str
) -> Group:
    """The group an instance of this association (with this study) belongs to."""
    if config.grouping == "study":
        return ("study", config.ae_title, study_instance_uid)
    if config.timeout > 0:
        return ("pair", config.ae_title, calling_ae_title)
    return ("association", association_id)


def quiet_period(config: AETitleConfig) -> float:
    """Seconds without an instance before the group's job is released."""
    if config.grouping == "study" and config.timeout <= 0:
        return STUDY_QUIET_SECONDS
    return config.timeout
