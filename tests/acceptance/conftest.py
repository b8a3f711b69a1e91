"""The running stack the acceptance suite drives, as a user reaches it.

``SERIESFLOW_ACCEPTANCE_TARGET`` chooses it:

- ``processes`` (the default): the suite starts ``bash scripts/stack.sh`` (RabbitMQ,
  SeaweedFS, Orthanc and ``seriesflow up`` as processes, no Docker) on free ports, with a
  RabbitMQ vhost of its own, and stops it afterwards.
- ``compose``: the compose stack is already up (``scripts/compose-ci.sh`` starts it with the
  README's commands). Its ports, token and credentials come from the same variables
  docker-compose.yml reads (``RECEIVER_PORT``, ``CONFIG_API_PORT``, ``MINIO_PORT``,
  ``ORTHANC_HTTP_PORT``, ``SERIESFLOW_API_TOKEN``, ...), with the same defaults; the CLI
  runs inside the stack with ``docker compose exec``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.infra import amqp_reachable, free_port, rabbitmq_vhost

from .stack import ROOT, Stack

TARGET = os.environ.get("SERIESFLOW_ACCEPTANCE_TARGET", "processes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.acceptance)


def _compose_stack() -> Stack:
    token = os.environ.get("SERIESFLOW_API_TOKEN")
    if not token:
        pytest.fail("SERIESFLOW_API_TOKEN is not set: the compose stack's config API needs it")
    env = os.environ
    return Stack(
        target="compose",
        receiver_port=int(env.get("RECEIVER_PORT", "11112")),
        api_port=int(env.get("CONFIG_API_PORT", "5000")),
        s3_endpoint=f"127.0.0.1:{env.get('MINIO_PORT', '9000')}",
        s3_access_key=env.get("MINIO_ROOT_USER", "seriesflow"),
        s3_secret_key=env.get("MINIO_ROOT_PASSWORD", "seriesflow-secret"),
        orthanc_http_port=int(env.get("ORTHANC_HTTP_PORT", "8042")),
        orthanc_user=env.get("ORTHANC_USER", "seriesflow"),
        orthanc_password=env.get("ORTHANC_PASSWORD", "seriesflow"),
        token=token,
        cli_prefix=[
            *("/usr/bin/docker", "compose", "exec", "-T", "-e", "COLUMNS=250"),
            *("config-api", "seriesflow"),
        ],
        cli_env={},
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if TARGET == "compose":
        yield _compose_stack()
        return
    if TARGET != "processes":
        pytest.fail(f"SERIESFLOW_ACCEPTANCE_TARGET is {TARGET!r}: give compose or processes")
    if not amqp_reachable():
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (scripts/services.sh starts it)")
    with rabbitmq_vhost() as amqp_url:
        yield from _process_stack(tmp_path_factory.mktemp("stack"), amqp_url)


def _process_stack(state: Path, amqp_url: str) -> Iterator[Stack]:
    ports = {
        name: free_port()
        for name in ("RECEIVER_PORT", "CONFIG_API_PORT", "MINIO_PORT", "ORTHANC_DICOM_PORT")
    }
    ports["ORTHANC_HTTP_PORT"] = free_port()
    token = secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")},
        **{k: str(v) for k, v in ports.items()},
        "SERIESFLOW_STACK_DIR": str(state),
        "SERIESFLOW_STACK_SKIP_SETUP": "1",
        "SERIESFLOW_AMQP_URL": amqp_url,
        "SERIESFLOW_API_TOKEN": token,
    }
    log = (state / "stack.log").open("wb")
    process = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "stack.sh")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not (state / "ready").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "scripts/stack.sh did not get ready:\n"
                    + (state / "stack.log").read_text(errors="replace")[-3000:]
                )
            time.sleep(0.5)
        cli_env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (state / "env").read_text().splitlines()
            if line.startswith("export ")
        )
        yield Stack(
            target="processes",
            receiver_port=ports["RECEIVER_PORT"],
            api_port=ports["CONFIG_API_PORT"],
            s3_endpoint=f"127.0.0.1:{ports['MINIO_PORT']}",
            s3_access_key="seriesflow",
            s3_secret_key="seriesflow-secret",
            orthanc_http_port=ports["ORTHANC_HTTP_PORT"],
            orthanc_user="seriesflow",
            orthanc_password="seriesflow",
            token=token,
            cli_prefix=[str(ROOT / ".venv" / "bin" / "seriesflow")],
            cli_env={
                **env,
                **{k: v.strip("'") for k, v in cli_env.items()},
                "COLUMNS": "250",
            },
            logs=state / "logs",
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        log.close()
