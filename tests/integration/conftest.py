"""Fixtures for integration tests: a real S3 server per session, a RabbitMQ vhost per test.

``SERIESFLOW_TEST_S3_ENDPOINT`` (with ``..._ACCESS_KEY`` / ``..._SECRET_KEY``) points the
tests at an existing S3 server (MinIO) instead of starting SeaweedFS. Without RabbitMQ the
integration tests are skipped, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.settings import ServiceSettings

from .infra import S3Server, amqp_reachable, rabbitmq_vhost, start_seaweedfs


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    endpoint = os.environ.get("SERIESFLOW_TEST_S3_ENDPOINT")
    if endpoint:
        yield S3Server(
            endpoint,
            os.environ.get("SERIESFLOW_TEST_S3_ACCESS_KEY", "minioadmin"),
            os.environ.get("SERIESFLOW_TEST_S3_SECRET_KEY", "minioadmin"),
        )
        return
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def amqp_url() -> Iterator[str]:
    if not amqp_reachable():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (.ci/run starts it)")
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture
def settings(s3_server: S3Server, amqp_url: str, tmp_path: Path) -> ServiceSettings:
    """Settings for one test: its own vhost and its own bucket."""
    return ServiceSettings(
        amqp_url=SecretStr(amqp_url),
        s3_endpoint=s3_server.endpoint,
        s3_access_key=SecretStr(s3_server.access_key),
        s3_secret_key=SecretStr(s3_server.secret_key),
        s3_bucket=f"sf-{uuid.uuid4().hex[:16]}",
        s3_secure=False,
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.5,
        delivery_limit=4,
    )
