"""Retention's durations and what is due (pure logic; the store side is integration)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.durations import parse_duration
from shared.retention import HeldJob, RetentionPolicy
from shared.settings import ServiceSettings


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("36h", 129600.0),
     ("7d", 604800.0), (" 1.5h ", 5400.0), ("0", 0.0)],
)  # fmt: skip
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["1x", "-5", "d", "", True, "7 days"])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_settings_take_durations_and_name_a_bad_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERIESFLOW_RETENTION_COMPLETED", "2d")
    monkeypatch.setenv("SERIESFLOW_RETENTION_FAILED", "0")
    policy = RetentionPolicy.from_settings(ServiceSettings())
    assert policy == RetentionPolicy(completed=172800.0, failed=0.0)
    monkeypatch.setenv("SERIESFLOW_RETENTION_INTERVAL", "soon")
    with pytest.raises(ValidationError, match="retention_interval"):
        ServiceSettings()


def held(state: str, age: float, keep: float) -> HeldJob:
    return HeldJob("a" * 32, "p", state, datetime.now(UTC), age, keep)  # type: ignore[arg-type]


def test_due_and_kept_forever() -> None:
    policy = RetentionPolicy(completed=60.0, failed=0.0)
    assert policy.keep_for("completed") == 60.0
    assert policy.keep_for("failed") == 0.0 and policy.keep_for("running") == 0.0
    assert held("completed", 59.0, 60.0).due is False
    assert held("completed", 59.0, 60.0).delete_after == pytest.approx(1.0)
    assert held("completed", 60.0, 60.0).due is True
    assert held("failed", 10**9, 0.0).due is False
    assert held("failed", 10**9, 0.0).delete_after is None
    assert held("completed", 61.0, 60.0).to_json()["deleteAfterSeconds"] == 0.0
