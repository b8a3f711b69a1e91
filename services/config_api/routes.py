"""seriesflow's own API, ``/api/v1``: configuration CRUD, rules, destinations' C-ECHO, jobs.

Status codes: 201 created, 200 read/updated, 204 deleted; 400 malformed request
(bad JSON, bad job id), 401 no or wrong token, 404 unknown object or job, 409 duplicate or
stale revision (or a destination still routed to), 422 invalid content (AE title, host,
port, rules, a route to a missing destination), 428 an update without a revision, 503 the
store or broker is unreachable.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from services.config_api import jobs
from services.config_api.deps import caller, job_store, repository
from services.config_api.echo import echo
from services.config_api.identifiers import reveal_identifiers
from services.config_api.models import (
    AETitleIn,
    AETitleOut,
    DestinationIn,
    DestinationOut,
    EchoOut,
    ErrorBody,
    ExplainIn,
    ExplainOut,
    JobDetail,
    JobSummary,
    PipelineOut,
    RulesValid,
    SourceIn,
    SourceOut,
)
from services.config_api.repository import (
    ApiError,
    AuditRecord,
    ConfigRepository,
    Kind,
    StoredObject,
    invalid,
    not_found,
)
from shared.configstore import parse_stored
from shared.errors import PermanentError, RulesError
from shared.jobstore import JobStore
from shared.pipelines import parse_pipeline, with_pipeline_id
from shared.selection import explain, render_explanation, rules_from_data
from shared.selection.explain import withhold_identifiers

router = APIRouter(prefix="/api/v1")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed request",
        401: "No or wrong bearer token",
        404: "Not found",
        409: "Exists already, or changed since read",
        422: "Invalid content",
    }.items()
}
_UPDATE_ERRORS = {**_ERRORS, 428: {"model": ErrorBody, "description": "No revision given"}}
NAME = Path(description="The object's name", max_length=128)
IF_MATCH = Header(default=None, description="The revision read (or 'revision' in the body)")
OVERRIDE_FILE = Query(
    default=False,
    alias="overrideFile",
    description="Replace the configuration file's entry of the same AE title or destination "
    "name (the file wins otherwise); recorded in the audit log",
)


def _revision(header: str | None, body: str | None) -> str | None:
    if header and body and header.strip().strip('"') != body.strip().strip('"'):
        raise ApiError(400, "bad_request", "If-Match and 'revision' differ")
    return header or body


def _etag(response: Response, stored: StoredObject) -> None:
    response.headers["ETag"] = f'"{stored.revision}"'


# -- AE titles ------------------------------------------------------------------------


@router.get("/ae-titles", response_model=list[AETitleOut], tags=["AE titles"])
def list_ae_titles(repo: ConfigRepository = Depends(repository)) -> list[AETitleOut]:
    return [AETitleOut.of(s) for s in repo.list_objects("ae-titles")]


@router.post(
    "/ae-titles", response_model=AETitleOut, status_code=201, responses=_ERRORS, tags=["AE titles"]
)
def create_ae_title(
    body: AETitleIn,
    response: Response,
    repo: ConfigRepository = Depends(repository),
    override: bool = OVERRIDE_FILE,
    who: str = Depends(caller),
) -> AETitleOut:
    stored = repo.create(
        "ae-titles", body.name or body.aeTitle.strip(), body.spec(), who, override_file=override
    )
    _etag(response, stored)
    return AETitleOut.of(stored)


@router.get("/ae-titles/{name}", response_model=AETitleOut, responses=_ERRORS, tags=["AE titles"])
def get_ae_title(
    response: Response, name: str = NAME, repo: ConfigRepository = Depends(repository)
) -> AETitleOut:
    stored = repo.get("ae-titles", name)
    _etag(response, stored)
    return AETitleOut.of(stored)


@router.put(
    "/ae-titles/{name}", response_model=AETitleOut, responses=_UPDATE_ERRORS, tags=["AE titles"]
)
def update_ae_title(
    body: AETitleIn,
    response: Response,
    name: str = NAME,
    if_match: str | None = IF_MATCH,
    repo: ConfigRepository = Depends(repository),
    override: bool = OVERRIDE_FILE,
    who: str = Depends(caller),
) -> AETitleOut:
    _same_name(name, body.name)
    revision = _revision(if_match, body.revision)
    stored = repo.update("ae-titles", name, body.spec(), revision, who, override_file=override)
    _etag(response, stored)
    return AETitleOut.of(stored)


# -- sources --------------------------------------------------------------------------


@router.get("/sources", response_model=list[SourceOut], tags=["Sources"])
def list_sources(repo: ConfigRepository = Depends(repository)) -> list[SourceOut]:
    return [SourceOut.of(s) for s in repo.list_objects("sources")]


@router.post(
    "/sources", response_model=SourceOut, status_code=201, responses=_ERRORS, tags=["Sources"]
)
def create_source(
    body: SourceIn,
    response: Response,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> SourceOut:
    stored = repo.create("sources", body.name or body.aeTitle.strip(), body.spec(), who)
    _etag(response, stored)
    return SourceOut.of(stored)


@router.get("/sources/{name}", response_model=SourceOut, responses=_ERRORS, tags=["Sources"])
def get_source(
    response: Response, name: str = NAME, repo: ConfigRepository = Depends(repository)
) -> SourceOut:
    stored = repo.get("sources", name)
    _etag(response, stored)
    return SourceOut.of(stored)


@router.put("/sources/{name}", response_model=SourceOut, responses=_UPDATE_ERRORS, tags=["Sources"])
def update_source(
    body: SourceIn,
    response: Response,
    name: str = NAME,
    if_match: str | None = IF_MATCH,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> SourceOut:
    _same_name(name, body.name)
    stored = repo.update("sources", name, body.spec(), _revision(if_match, body.revision), who)
    _etag(response, stored)
    return SourceOut.of(stored)


# -- destinations ---------------------------------------------------------------------


@router.get("/destinations", response_model=list[DestinationOut], tags=["Destinations"])
def list_destinations(repo: ConfigRepository = Depends(repository)) -> list[DestinationOut]:
    return [DestinationOut.of(s) for s in repo.list_objects("destinations")]


@router.post(
    "/destinations",
    response_model=DestinationOut,
    status_code=201,
    responses=_ERRORS,
    tags=["Destinations"],
)
def create_destination(
    body: DestinationIn,
    response: Response,
    repo: ConfigRepository = Depends(repository),
    override: bool = OVERRIDE_FILE,
    who: str = Depends(caller),
) -> DestinationOut:
    if not body.name:
        raise invalid("a destination needs a 'name'")
    stored = repo.create(
        "destinations", body.name, body.spec(body.name), who, override_file=override
    )
    _etag(response, stored)
    return DestinationOut.of(stored)


@router.get(
    "/destinations/{name}",
    response_model=DestinationOut,
    responses=_ERRORS,
    tags=["Destinations"],
)
def get_destination(
    response: Response, name: str = NAME, repo: ConfigRepository = Depends(repository)
) -> DestinationOut:
    stored = repo.get("destinations", name)
    _etag(response, stored)
    return DestinationOut.of(stored)


@router.put(
    "/destinations/{name}",
    response_model=DestinationOut,
    responses=_UPDATE_ERRORS,
    tags=["Destinations"],
)
def update_destination(
    body: DestinationIn,
    response: Response,
    name: str = NAME,
    if_match: str | None = IF_MATCH,
    repo: ConfigRepository = Depends(repository),
    override: bool = OVERRIDE_FILE,
    who: str = Depends(caller),
) -> DestinationOut:
    _same_name(name, body.name)
    revision = _revision(if_match, body.revision)
    stored = repo.update(
        "destinations", name, body.spec(name), revision, who, override_file=override
    )
    _etag(response, stored)
    return DestinationOut.of(stored)


@router.post(
    "/destinations/{name}/echo",
    response_model=EchoOut,
    responses=_ERRORS,
    tags=["Destinations"],
    summary="C-ECHO the destination (stored, else from the configuration file)",
)
async def echo_destination(
    request: Request, name: str = NAME, repo: ConfigRepository = Depends(repository)
) -> EchoOut:
    stored = await run_in_threadpool(repo.find, "destinations", name)
    if stored is not None:
        try:  # validated when it was stored (normalize_spec), unless by an older version
            destination = parse_stored("destinations", name, stored.spec)
        except PermanentError as exc:
            raise invalid(exc.reason) from exc
    elif (static := repo.static.destination(name)) is not None:
        destination = static
    else:
        raise not_found(f"destination {name!r}: not found")
    calling = repo.static.dicom.scu.ae_title
    timeout = float(request.app.state.echo_timeout)
    return await run_in_threadpool(echo, destination, calling, timeout)


# -- pipelines ------------------------------------------------------------------------

PIPELINE_BODY = Body(
    description="A pipeline document (docs/pipelines.md), rules inline; 'revision' for updates",
    examples=[{"name": "brain", "image-format": "nii.gz", "rules": {"selections": []}}],
)


def _pipeline_body(body: Any) -> tuple[dict[str, Any], str | None]:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "a pipeline must be a JSON object")
    body = dict(body)
    revision = body.pop("revision", None)
    if revision is not None and not isinstance(revision, str):
        raise invalid("'revision' must be a string")
    return body, revision


@router.get("/pipelines", response_model=list[PipelineOut], tags=["Pipelines"])
def list_pipelines(repo: ConfigRepository = Depends(repository)) -> list[PipelineOut]:
    return [PipelineOut.of(s) for s in repo.list_objects("pipelines")]


@router.post(
    "/pipelines",
    response_model=PipelineOut,
    status_code=201,
    responses=_ERRORS,
    tags=["Pipelines"],
)
def create_pipeline(
    response: Response,
    body: dict[str, Any] = PIPELINE_BODY,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> PipelineOut:
    spec, _ = _pipeline_body(body)
    name = spec.get("name")
    if not isinstance(name, str):
        raise invalid("a pipeline needs a 'name'")
    stored = repo.create("pipelines", name, with_pipeline_id(spec), who)
    _etag(response, stored)
    return PipelineOut.of(stored)


@router.get("/pipelines/{name}", response_model=PipelineOut, responses=_ERRORS, tags=["Pipelines"])
def get_pipeline(
    response: Response, name: str = NAME, repo: ConfigRepository = Depends(repository)
) -> PipelineOut:
    stored = repo.get("pipelines", name)
    _etag(response, stored)
    return PipelineOut.of(stored)


@router.put(
    "/pipelines/{name}", response_model=PipelineOut, responses=_UPDATE_ERRORS, tags=["Pipelines"]
)
def update_pipeline(
    response: Response,
    name: str = NAME,
    body: dict[str, Any] = PIPELINE_BODY,
    if_match: str | None = IF_MATCH,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> PipelineOut:
    spec, body_revision = _pipeline_body(body)
    spec_name = spec.get("name")
    _same_name(name, spec_name if isinstance(spec_name, str) else None)
    spec = with_pipeline_id(spec, keep=repo.get("pipelines", name).spec.get("id"))
    stored = repo.update("pipelines", name, spec, _revision(if_match, body_revision), who)
    _etag(response, stored)
    return PipelineOut.of(stored)


# -- delete, any kind ----------------------------------------------------------------


@router.delete(
    "/{kind}/{name}",
    status_code=204,
    responses=_ERRORS,
    tags=["Configuration"],
    summary="Delete an AE title, source, destination or pipeline (If-Match: only that revision)",
)
def delete_object(
    kind: Kind = Path(description="ae-titles, sources, destinations or pipelines"),
    name: str = NAME,
    if_match: str | None = IF_MATCH,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> Response:
    repo.delete(kind, name, who, if_match)
    return Response(status_code=204)


@router.get("/audit", response_model=list[AuditRecord], tags=["Configuration"])
def audit_log(
    limit: int = Query(default=100, ge=1, le=1000),
    repo: ConfigRepository = Depends(repository),
) -> list[AuditRecord]:
    return repo.audit(limit)


# -- rules ----------------------------------------------------------------------------


def _rules(data: Any, source: str) -> Any:
    try:
        return rules_from_data(data, source=source)
    except RulesError as exc:
        raise ApiError(422, "invalid_rules", exc.reason) from exc


@router.post(
    "/rules/validate",
    response_model=RulesValid,
    responses=_ERRORS,
    tags=["Rules"],
    summary="Check selection rules (Clara's format or seriesflow's); 422 names the bad rule",
)
def validate_rules(
    body: dict[str, Any] = Body(examples=[{"selections": []}]),
) -> RulesValid:
    rules = _rules(body, "request body")
    return RulesValid(
        valid=True,
        source=rules.source,
        selections=[s.name for s in rules.selections],
        emptyRules=rules.is_empty,
    )


@router.post(
    "/rules/explain",
    response_model=ExplainOut,
    responses=_ERRORS,
    tags=["Rules"],
    summary="Explain rules (given, or a stored pipeline's) against a stored job's outputs",
)
def explain_rules(
    body: ExplainIn,
    store: JobStore = Depends(job_store),
    repo: ConfigRepository = Depends(repository),
    reveal: bool = Depends(reveal_identifiers),
) -> ExplainOut:
    job_id = jobs.job_id(body.jobId)
    if body.rules is not None and body.pipeline is not None:
        raise ApiError(400, "bad_request", "give 'rules' or 'pipeline', not both")
    if body.pipeline is not None:
        stored = repo.get("pipelines", body.pipeline)
        rules = parse_pipeline(stored.spec, f"pipeline {stored.name!r}").rules
    else:
        rules = _rules(body.rules, "rules")
    try:
        outputs = store.parser_outputs(job_id)
    except PermanentError as exc:
        raise not_found(exc.reason) from exc
    explanation = explain(rules, outputs.metadata, outputs.series_images)
    if not reveal:
        explanation = withhold_identifiers(explanation)
    return ExplainOut(
        jobId=job_id,
        explanation=explanation.model_dump(mode="json"),
        text=render_explanation(explanation),
    )


# -- jobs -----------------------------------------------------------------------------


@router.get("/jobs", response_model=list[JobSummary], tags=["Jobs"])
def list_jobs(
    limit: int = Query(default=20, ge=1, le=1000),
    store: JobStore = Depends(job_store),
) -> list[JobSummary]:
    return jobs.list_jobs(store, limit)


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=_ERRORS, tags=["Jobs"])
def get_job(job_id: str, store: JobStore = Depends(job_store)) -> JobDetail:
    return jobs.job_detail(store, job_id)


@router.get(
    "/jobs/{job_id}/selection",
    response_model=dict[str, dict[str, str]],
    responses=_ERRORS,
    tags=["Jobs"],
    summary="The job's selected-images.json",
)
def get_job_selection(job_id: str, store: JobStore = Depends(job_store)) -> Any:
    return jobs.job_selection(store, job_id)


def _same_name(path_name: str, body_name: str | None) -> None:
    if body_name is not None and body_name != path_name:
        raise ApiError(400, "bad_request", f"name {body_name!r} differs from the path's")
