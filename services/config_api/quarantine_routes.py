"""``/api/v1/quarantine``: instances acknowledged on associations that never released.

``GET /api/v1/quarantine`` lists them; ``POST /api/v1/quarantine/{associationId}/release``
asks the receiver to release one as a job (202: it does within
``SERIESFLOW_QUARANTINE_CHECK_SECONDS``); ``DELETE /api/v1/quarantine/{associationId}``
deletes its instances. Same bearer tokens as every other route; every action is logged
with the caller. See docs/receiver.md, "Quarantine".
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from services.config_api.deps import caller, job_store
from shared.jobstore import JobStore, QuarantinedAssociation
from shared.keys import validate_id
from shared.logs import get_logger

log = get_logger("config_api")
router = APIRouter(prefix="/api/v1/quarantine", tags=["Quarantine"])


class QuarantinedOut(BaseModel):
    associationId: str
    calledAeTitle: str
    callingAeTitle: str
    callingHost: str
    ended: str = Field(description="aborted, interrupted (receiver stopped) or orphaned")
    reason: str
    quarantinedAt: datetime
    instances: int
    studies: int
    releaseRequested: bool

    @classmethod
    def of(cls, q: QuarantinedAssociation) -> QuarantinedOut:
        return cls(
            associationId=q.association_id,
            calledAeTitle=q.called_ae_title,
            callingAeTitle=q.calling_ae_title,
            callingHost=q.calling_host,
            ended=q.ended,
            reason=q.reason,
            quarantinedAt=q.quarantined_at,
            instances=q.instances,
            studies=q.studies,
            releaseRequested=q.release_requested,
        )


class DeletedOut(BaseModel):
    associationId: str
    deletedObjects: int


def install(app: FastAPI) -> None:
    """Serve these routes on ``app``, behind the tokens."""
    app.include_router(router, dependencies=[Depends(caller)])


@router.get("", response_model=list[QuarantinedOut], summary="Quarantined associations")
async def list_quarantine(jobs: JobStore = Depends(job_store)) -> list[QuarantinedOut]:
    held = await run_in_threadpool(jobs.quarantined)
    return [QuarantinedOut.of(q) for q in held]


@router.post(
    "/{associationId}/release",
    response_model=QuarantinedOut,
    status_code=202,
    summary="Release a quarantined association as a job (done by the receiver)",
)
async def release_quarantined(
    associationId: str,  # noqa: N803 (the path's name)
    jobs: JobStore = Depends(job_store),
    who: str = Depends(caller),
) -> QuarantinedOut:
    association_id = validate_id(associationId, "association id")
    held = await run_in_threadpool(jobs.request_quarantine_release, association_id)
    log.info(
        "quarantine release asked through the API",
        extra={"who": who, "association": association_id, "instances": held.instances},
    )
    return QuarantinedOut.of(held)


@router.delete(
    "/{associationId}", response_model=DeletedOut, summary="Delete a quarantined association"
)
async def delete_quarantined(
    associationId: str,  # noqa: N803
    jobs: JobStore = Depends(job_store),
    who: str = Depends(caller),
) -> DeletedOut:
    association_id = validate_id(associationId, "association id")
    deleted = await run_in_threadpool(jobs.delete_quarantined, association_id)
    log.warning(
        "quarantined association deleted through the API",
        extra={"who": who, "association": association_id, "objects": deleted},
    )
    return DeletedOut(associationId=association_id, deletedObjects=deleted)
