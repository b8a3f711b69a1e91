"""FastAPI dependencies: the repository, the store, and who is calling."""

from __future__ import annotations

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.config_api.repository import ApiError, ConfigRepository
from services.config_api.security import TokenChecker
from shared.jobstore import JobStore

bearer = HTTPBearer(auto_error=False, description="SERIESFLOW_API_TOKEN(S), when configured")


def repository(request: Request) -> ConfigRepository:
    repo: ConfigRepository = request.app.state.repository
    return repo


def job_store(request: Request) -> JobStore:
    jobs: JobStore = request.app.state.jobs
    return jobs


def caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
) -> str:
    """The token's name (for the audit log); 401 without a valid token when tokens are set."""
    checker: TokenChecker = request.app.state.tokens
    who = checker.identify(request.headers.get("authorization"))
    if who is None:
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    return who
