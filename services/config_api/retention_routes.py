"""``/api/v1/retention``: the jobs the store holds, and purging those whose time is up.

``GET /api/v1/retention`` lists every job with its state and when retention deletes it;
``POST /api/v1/retention/purge`` deletes the jobs that are due (``?dryRun=true``: only
says which). Same bearer tokens as every other route. The policy is the service's
``SERIESFLOW_RETENTION_COMPLETED`` / ``SERIESFLOW_RETENTION_FAILED`` (docs/retention.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from services.config_api.deps import caller, job_store
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.retention import HeldJob, RetentionPolicy, held_jobs, purge
from shared.settings import ServiceSettings

log = get_logger("config_api")
router = APIRouter(prefix="/api/v1/retention", tags=["Retention"])


class PolicyOut(BaseModel):
    completedSeconds: float = Field(description="How long completed jobs are kept; 0: forever")
    failedSeconds: float = Field(
        description="How long failed, dead-lettered or unfinished jobs are kept; 0: forever"
    )


class HeldJobOut(BaseModel):
    jobId: str
    pipeline: str | None
    state: Literal["completed", "failed", "running"]
    updated: datetime = Field(description="When the job's last object was stored")
    ageSeconds: float
    keepSeconds: float = Field(description="0: kept forever")
    deleteAfterSeconds: float | None = Field(description="0 when due; null: kept forever")
    due: bool

    @classmethod
    def of(cls, job: HeldJob) -> HeldJobOut:
        return cls.model_validate(job.to_json())


class RetentionOut(BaseModel):
    policy: PolicyOut
    jobs: list[HeldJobOut] = Field(description="Every job held, oldest first")
    due: int = Field(description="How many of them a purge would delete now")


class PurgeOut(BaseModel):
    dryRun: bool
    purged: list[HeldJobOut] = Field(description="Jobs deleted (dry run: that would be)")
    deletedObjects: int
    errors: list[str] = Field(description="Jobs not deleted this time, with the reason")


def install(app: FastAPI, settings: ServiceSettings) -> None:
    """Serve these routes on ``app`` with the policy of ``settings``, behind the tokens."""
    app.state.retention = RetentionPolicy.from_settings(settings)
    app.include_router(router, dependencies=[Depends(caller)])


def policy(request: Request) -> RetentionPolicy:
    value: RetentionPolicy = request.app.state.retention
    return value


def _policy_out(value: RetentionPolicy) -> PolicyOut:
    return PolicyOut(completedSeconds=value.completed, failedSeconds=value.failed)


@router.get("", response_model=RetentionOut, summary="Jobs held and when they are deleted")
async def list_retention(
    jobs: JobStore = Depends(job_store), current: RetentionPolicy = Depends(policy)
) -> RetentionOut:
    held = await run_in_threadpool(held_jobs, jobs, current)
    return RetentionOut(
        policy=_policy_out(current),
        jobs=[HeldJobOut.of(j) for j in held],
        due=sum(1 for j in held if j.due),
    )


@router.post("/purge", response_model=PurgeOut, summary="Delete the jobs that are due")
async def purge_retention(
    dry_run: bool = Query(
        default=False, alias="dryRun", description="Only say what would be deleted"
    ),
    jobs: JobStore = Depends(job_store),
    current: RetentionPolicy = Depends(policy),
    who: str = Depends(caller),
) -> PurgeOut:
    report = await run_in_threadpool(lambda: purge(jobs, current, dry_run=dry_run))
    log.info(
        "retention purge asked through the API",
        extra={"who": who, "dry_run": dry_run, "jobs": len(report.purged)},
    )
    return PurgeOut(
        dryRun=dry_run,
        purged=[HeldJobOut.of(j) for j in report.purged],
        deletedObjects=report.deleted_objects,
        errors=report.errors,
    )
