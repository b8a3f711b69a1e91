"""The Clara DICOM Adapter's REST API, same paths, bodies, shapes and status codes.

``GET``/``POST /api/config/{claraaetitle,sourceaetitle,destinationaetitle}`` and
``DELETE /api/config/<kind>/<name>``. Objects come back as Kubernetes-style custom
resources (``apiVersion``, ``kind``, ``metadata``, ``spec``); lists as ``<Kind>List`` with
``items``; a delete as a ``Status``. Clara answers 200 for a create and 400 when the
resource exists or is invalid; so does this API (errors carry a ``Status`` body).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from services.config_api.deps import caller, repository
from services.config_api.repository import ConfigRepository, StoredObject, check_name

API_VERSION = "dicom.clara.nvidia.com/v1beta1"
ClaraKind = Literal["claraaetitle", "sourceaetitle", "destinationaetitle"]
KIND_OF: dict[str, tuple[str, str]] = {  # path -> (repository kind, CRD kind)
    "claraaetitle": ("ae-titles", "ClaraAeTitle"),
    "sourceaetitle": ("sources", "Source"),
    "destinationaetitle": ("destinations", "Destination"),
}

router = APIRouter(prefix="/api/config", tags=["Clara-compatible"])


class _ClaraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Clara clients may send more of the schema


class ClaraAeTitleIn(_ClaraIn):
    name: str = Field(description="Name of the resource")
    pipelineId: str | None = Field(default=None, description="Pipeline mapped to the AE title")
    aeTitle: str
    timeout: float = 0
    overwriteSameInstance: bool = False
    ignoredSopClasses: list[str] = Field(default_factory=list)


class ClaraSourceIn(_ClaraIn):
    name: str | None = Field(default=None, description="Defaults to the AE title")
    hostIp: str
    aeTitle: str


class ClaraDestinationIn(_ClaraIn):
    name: str
    hostIp: str
    aeTitle: str
    port: int


class CrdMetadata(BaseModel):
    name: str
    resourceVersion: str
    creationTimestamp: str
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="seriesflow/origin: file for entries of the configuration file (read-only)",
    )


class Crd(BaseModel):
    apiVersion: str
    kind: str
    metadata: CrdMetadata
    spec: dict[str, Any]


class CrdList(BaseModel):
    apiVersion: str
    kind: str
    items: list[Crd]
    metadata: dict[str, Any]


class Status(BaseModel):
    apiVersion: str = "v1"
    kind: str = "Status"
    status: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    reason: str = ""
    code: int = 200


def _spec(kind: str, stored: StoredObject) -> dict[str, Any]:
    spec = stored.spec
    if kind == "ae-titles":
        return {
            "name": stored.name,
            "pipelineId": spec.get("pipeline"),
            "aeTitle": spec["ae-title"],
            "timeout": spec.get("timeout", 0),
            "overwriteSameInstance": spec.get("overwrite-same-instance", False),
            "ignoredSopClasses": list(spec.get("ignored-sop-classes") or ()),
        }
    if kind == "sources":
        return {"name": stored.name, "hostIp": spec["host-ip"], "aeTitle": spec["ae-title"]}
    return {
        "name": stored.name,
        "hostIp": spec["host-ip"],
        "aeTitle": spec["ae-title"],
        "port": spec["port"],
    }


def crd(path_kind: str, stored: StoredObject) -> Crd:
    kind, crd_kind = KIND_OF[path_kind]
    return Crd(
        apiVersion=API_VERSION,
        kind=crd_kind,
        metadata=CrdMetadata(
            name=stored.name,
            resourceVersion=stored.revision,
            creationTimestamp=stored.created_at,
            labels={"seriesflow/origin": "file"} if stored.origin == "file" else {},
        ),
        spec=_spec(kind, stored),
    )


def _list(path_kind: str, repo: ConfigRepository) -> CrdList:
    kind, crd_kind = KIND_OF[path_kind]
    return CrdList(
        apiVersion=API_VERSION,
        kind=f"{crd_kind}List",
        items=[crd(path_kind, s) for s in repo.list_objects(kind)],
        metadata={"resourceVersion": ""},
    )


@router.get("/claraaetitle", response_model=CrdList, summary="List our (Clara) AE titles")
def list_clara_ae_titles(repo: ConfigRepository = Depends(repository)) -> CrdList:
    return _list("claraaetitle", repo)


@router.get("/sourceaetitle", response_model=CrdList, summary="List DICOM sources")
def list_sources(repo: ConfigRepository = Depends(repository)) -> CrdList:
    return _list("sourceaetitle", repo)


@router.get("/destinationaetitle", response_model=CrdList, summary="List DICOM destinations")
def list_destinations(repo: ConfigRepository = Depends(repository)) -> CrdList:
    return _list("destinationaetitle", repo)


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Status, "description": "Exists already, or invalid"}
}


@router.post(
    "/claraaetitle", response_model=Crd, responses=_ERRORS, summary="Create a Clara AE title"
)
def create_clara_ae_title(
    body: ClaraAeTitleIn,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> Crd:
    spec = {
        "ae-title": body.aeTitle,
        "pipeline": body.pipelineId,
        "timeout": body.timeout,
        "overwrite-same-instance": body.overwriteSameInstance,
        "ignored-sop-classes": body.ignoredSopClasses,
    }
    return crd("claraaetitle", repo.create("ae-titles", body.name, spec, who))


@router.post("/sourceaetitle", response_model=Crd, responses=_ERRORS, summary="Create a source")
def create_source(
    body: ClaraSourceIn,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> Crd:
    name = body.name or body.aeTitle
    spec = {"ae-title": body.aeTitle, "host-ip": body.hostIp}
    return crd("sourceaetitle", repo.create("sources", name, spec, who))


@router.post(
    "/destinationaetitle", response_model=Crd, responses=_ERRORS, summary="Create a destination"
)
def create_destination(
    body: ClaraDestinationIn,
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> Crd:
    spec = {"name": body.name, "ae-title": body.aeTitle, "host-ip": body.hostIp, "port": body.port}
    return crd("destinationaetitle", repo.create("destinations", body.name, spec, who))


@router.delete(
    "/{kind}/{name}",
    response_model=Status,
    responses={404: {"model": Status, "description": "No such resource"}},
    summary="Delete a Clara AE title, source or destination",
)
def delete_resource(
    kind: ClaraKind = Path(description="claraaetitle, sourceaetitle or destinationaetitle"),
    name: str = Path(description="metadata.name of the resource"),
    body: Any = Body(default=None, description="Ignored (Clara's example sends one)"),
    repo: ConfigRepository = Depends(repository),
    who: str = Depends(caller),
) -> Status:
    repo_kind = KIND_OF[kind][0]
    check_name(name, repo_kind)
    repo.delete(repo_kind, name, who)
    return Status(status="Success", metadata={"name": name}, code=200)
