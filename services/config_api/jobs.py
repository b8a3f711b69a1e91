"""What the store says about jobs: their stage, events, outputs, errors and selection."""

from __future__ import annotations

import json
from typing import Any

from services.config_api.models import JobDetail, JobError, JobEvent, JobSummary
from services.config_api.repository import ApiError, not_found
from services.status import STAGES, latest_jobs
from shared import keys
from shared.dicom.metadata import SELECTED_IMAGES_FILE
from shared.errors import InvalidIdentifierError
from shared.store import ObjectNotFoundError, ObjectStore


def job_id(value: str) -> str:
    try:
        return keys.validate_id(value, "job id")
    except InvalidIdentifierError as exc:
        raise ApiError(400, "bad_request", exc.reason) from exc


def list_jobs(store: ObjectStore, limit: int) -> list[JobSummary]:
    return [
        JobSummary(jobId=j.job_id, stage=j.stage, updated=j.updated.isoformat(), exports=j.exports)
        for j in latest_jobs(store, limit)
    ]


def _json(store: ObjectStore, key: str) -> Any:
    try:
        return json.loads(store.get_bytes(key))
    except ValueError:
        return None


def job_detail(store: ObjectStore, value: str) -> JobDetail:
    prefix = keys.job_prefix(job_id(value))
    listed = list(store.list_with_times(prefix))
    if not listed:
        raise not_found(f"job {value} has nothing stored")
    events: list[JobEvent] = []
    outputs: list[str] = []
    errors: list[JobError] = []
    manifest = False
    for key, modified in sorted(listed, key=lambda item: item[1]):
        rest = key[len(prefix) :]
        if rest == "manifest.json":
            manifest = True
        elif rest.startswith("output/"):
            outputs.append(rest[len("output/") :])
        elif rest.startswith("events/") and rest.endswith(".json"):
            stage = rest[len("events/") : -len(".json")]
            try:
                envelope = _json(store, key)
            except ObjectNotFoundError:
                continue
            envelope = envelope if isinstance(envelope, dict) else {}
            body = envelope.get("body") if isinstance(envelope.get("body"), dict) else None
            events.append(
                JobEvent(
                    stage=stage,
                    updated=modified.isoformat(),
                    type=envelope.get("type"),
                    createdAt=envelope.get("created_at"),
                    body=body,
                )
            )
            if stage == "failed" and body is not None:
                errors.append(
                    JobError(stage=str(body.get("stage", "")), reason=str(body.get("reason", "")))
                )
    stages = {e.stage for e in events}
    stage = next((s for s in reversed(STAGES) if s in stages), "unknown")
    return JobDetail(
        jobId=value,
        stage="failed" if "failed" in stages else stage,
        manifest=manifest,
        events=events,
        outputs=sorted(outputs),
        errors=errors,
    )


def job_selection(store: ObjectStore, value: str) -> Any:
    try:
        return json.loads(store.get_bytes(keys.output(job_id(value), SELECTED_IMAGES_FILE)))
    except ObjectNotFoundError as exc:
        raise not_found(f"job {value} has no {SELECTED_IMAGES_FILE}") from exc
