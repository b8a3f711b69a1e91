"""docs/openapi.json is the document the config API serves."""

from __future__ import annotations

import json
from pathlib import Path

from services.config_api.openapi import openapi_document, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: .venv/bin/python -m services.config_api.openapi "
        "docs/openapi.json"
    )


def test_document_has_both_apis_and_bearer_auth() -> None:
    document = openapi_document()
    paths = set(document["paths"])
    assert {"/api/config/claraaetitle", "/api/config/{kind}/{name}", "/health"} <= paths
    assert {"/api/v1/ae-titles/{name}", "/api/v1/rules/explain", "/api/v1/jobs/{job_id}"} <= paths
    assert set(document["paths"]["/api/v1/pipelines/{name}"]) == {"get", "put"}
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" not in document["paths"]["/health"]["get"]
    assert json.loads(DOC.read_text(encoding="utf-8"))["info"]["title"] == document["info"]["title"]
