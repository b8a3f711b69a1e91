"""The job store's reading of a job's stored objects (pure: no store needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.jobstore import _summarise, export_stage, exported_stage

JOB = "a" * 32
EXPORT = "b" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_an_export_counts_once_and_completes_the_job() -> None:
    objects = {
        "manifest.json": at(0),
        "events/received.json": at(1),
        "events/parsed.json": at(2),
        "output/dicom-metadata.json": at(2),
        "events/selected.json": at(3),
        f"events/{export_stage(EXPORT)}.json": at(3),
    }
    running = _summarise(JOB, objects)
    assert (running.stage, running.state, running.export_requests) == ("selected", "running", 1)
    done = _summarise(JOB, {**objects, f"events/{exported_stage(EXPORT)}.json": at(9)})
    # seriesflow status once counted export-<id> and exported-<id>: two for one export.
    assert (done.export_requests, done.exports_done) == (1, 1)
    assert done.state == "completed"
    assert (done.created, done.updated) == (at(0), at(9))
    assert done.outputs == ["dicom-metadata.json"]


def test_a_stored_failure_makes_the_job_failed() -> None:
    info = _summarise(JOB, {"manifest.json": at(0), "events/failed.json": at(5)})
    assert (info.stage, info.state) == ("none", "failed")


def test_a_job_selected_without_exports_is_completed() -> None:
    info = _summarise(JOB, {"events/received.json": at(0), "events/selected.json": at(1)})
    assert info.state == "completed"
    assert not info.has_manifest
