"""The order in which a job's stored events are replayed."""

from __future__ import annotations

import pytest

from shared import keys
from shared.errors import InvalidIdentifierError
from shared.jobstore import events_prefix, export_stage, replay_order, stage_of

JOB = "0123456789abcdef0123456789abcdef"
EXPORT_A = "a" * 32
EXPORT_B = "b" * 32


def key(stage: str) -> str:
    return keys.event(JOB, stage)


def test_events_replay_in_stage_order_whatever_order_they_are_listed_in() -> None:
    listed = [
        key(export_stage(EXPORT_B)),
        key("selected"),
        key("received"),
        key(export_stage(EXPORT_A)),
        key("parsed"),
    ]
    assert [stage_of(k) for k in replay_order(listed)] == [
        "received",
        "parsed",
        "selected",
        f"export-{EXPORT_A}",
        f"export-{EXPORT_B}",
    ]


def test_a_failure_replays_last_and_only_while_the_job_is_not_selected() -> None:
    failed = [key("failed"), key("parsed"), key("received")]
    assert [stage_of(k) for k in replay_order(failed)] == ["received", "parsed", "failed"]
    overcome = [*failed, key("selected")]
    assert [stage_of(k) for k in replay_order(overcome)] == ["received", "parsed", "selected"]


def test_other_stages_come_after_the_exports_and_stray_objects_are_ignored() -> None:
    listed = [key("zeta"), key(export_stage(EXPORT_A)), key("received"), events_prefix(JOB) + "x"]
    assert [stage_of(k) for k in replay_order(listed)] == ["received", f"export-{EXPORT_A}", "zeta"]


def test_export_stage_names_are_safe_keys() -> None:
    assert keys.event(JOB, export_stage(EXPORT_A)).endswith(f"/events/export-{EXPORT_A}.json")
    with pytest.raises(InvalidIdentifierError):
        export_stage("T1C PACS")
    with pytest.raises(InvalidIdentifierError):
        events_prefix("../x")
