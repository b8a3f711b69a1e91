"""The config API's views of jobs, from :class:`shared.jobstore.JobStore`."""

from __future__ import annotations

import json
from typing import Any

from services.config_api.models import JobDetail, JobError, JobEvent, JobSummary
from services.config_api.repository import ApiError, not_found
from shared import keys
from shared.dicom.metadata import SELECTED_IMAGES_FILE
from shared.errors import InvalidIdentifierError, InvalidInputError
from shared.events import JobFailed
from shared.jobstore import FAILED, JobInfo, JobStore
from shared.store import ObjectNotFoundError


def job_id(value: str) -> str:
    try:
        return keys.validate_id(value, "job id")
    except InvalidIdentifierError as exc:
        raise ApiError(400, "bad_request", exc.reason) from exc


def summary(job: JobInfo) -> JobSummary:
    return JobSummary(
        jobId=job.job_id,
        pipeline=job.pipeline,
        stage="failed" if job.state == "failed" else job.stage,
        state=job.state,
        created=job.created.isoformat(),
        updated=job.updated.isoformat(),
        exports=job.export_requests,
        exportsDone=job.exports_done,
    )


def list_jobs(jobs: JobStore, limit: int) -> list[JobSummary]:
    return [summary(j) for j in jobs.list_jobs(limit)]


def job_detail(jobs: JobStore, value: str) -> JobDetail:
    info = jobs.job(job_id(value))
    if info is None:
        raise not_found(f"job {value} has nothing stored")
    events: list[JobEvent] = []
    errors: list[JobError] = []
    for stage, modified in sorted(info.events.items(), key=lambda item: item[1]):
        try:
            envelope = jobs.load_event(info.job_id, stage)
        except InvalidInputError:
            envelope = None
        if envelope is None:
            events.append(JobEvent(stage=stage, updated=modified.isoformat()))
            continue
        body = json.loads(envelope.body.model_dump_json())
        events.append(
            JobEvent(
                stage=stage,
                updated=modified.isoformat(),
                type=envelope.type,
                createdAt=envelope.created_at.isoformat(),
                body=body,
            )
        )
        if stage == FAILED and isinstance(envelope.body, JobFailed):
            errors.append(JobError(stage=envelope.body.stage, reason=envelope.body.reason))
    return JobDetail(
        jobId=info.job_id,
        pipeline=info.pipeline,
        stage="failed" if info.state == "failed" else info.stage,
        state=info.state,
        manifest=info.has_manifest,
        events=events,
        outputs=info.outputs,
        errors=errors,
    )


def job_selection(jobs: JobStore, value: str) -> Any:
    try:
        return json.loads(jobs.output(job_id(value), SELECTED_IMAGES_FILE))
    except ObjectNotFoundError as exc:
        raise not_found(f"job {value} has no {SELECTED_IMAGES_FILE}") from exc
