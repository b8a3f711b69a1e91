"""``seriesflow config`` against a running config API (uvicorn on a free port, a real
SeaweedFS store, a real RabbitMQ vhost) and a real DICOM peer (dcmtk storescp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from seriesflow.cli import app
from services.config_api.main import ConfigApiService
from services.config_api.settings import ConfigApiSettings
from shared.settings import ServiceSettings

from .infra import free_port, wait_for_port
from .processes import StoreSCP

TOKEN = "cli-test-token-1234"


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[str]:
    port = free_port()
    config = ConfigApiSettings(
        **{
            **settings.model_dump(),
            "host": "127.0.0.1",
            "port": port,
            "api_token": SecretStr(TOKEN),
        }
    )
    with ConfigApiService(config):
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"


def run(api: str, *args: str, token: str = TOKEN) -> tuple[int, str, str]:
    runner = CliRunner()
    env = {"SERIESFLOW_API_URL": api, "SERIESFLOW_API_TOKEN": token, "COLUMNS": "200"}
    result = runner.invoke(app, ["config", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_add_list_change_remove_every_kind(api: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"selections": [{"name": "ct", "conditions": {}}]}))
    pipeline = tmp_path / "brain.yaml"
    pipeline.write_text("name: brain\nimage-format: nii.gz\nrules-file: rules.json\n")
    code, stdout, stderr = run(api, "add", "pipeline", "-f", str(pipeline))
    assert (code, stderr) == (0, ""), stderr
    assert "added pipeline brain" in stdout

    assert run(api, "add", "ae-title", "aeTitle=BRAIN_AI", "pipeline=brain", "timeout=5")[0] == 0
    assert run(api, "add", "source", "aeTitle=MODALITY", "hostIp=10.1.2.3")[0] == 0
    code, _, stderr = run(
        api, "add", "destination", "name=pacs", "aeTitle=PACS", "hostIp=10.0.0.5", "port=104"
    )
    assert (code, stderr) == (0, "")

    code, stdout, _ = run(api, "list", "ae-titles", "--json")
    assert code == 0
    [ae] = json.loads(stdout)
    assert (ae["aeTitle"], ae["pipeline"], ae["timeout"]) == ("BRAIN_AI", "brain", 5)
    code, stdout, _ = run(api, "list", "destinations")
    assert code == 0 and "pacs" in stdout and "10.0.0.5" in stdout
    code, stdout, _ = run(api, "show", "pipeline", "brain")
    assert json.loads(stdout)["definition"]["rules"]["selections"][0]["name"] == "ct"

    assert run(api, "change", "destination", "pacs", "port=11112")[0] == 0
    code, stdout, _ = run(api, "show", "destination", "pacs", "--json")
    assert json.loads(stdout)["port"] == 11112
    assert run(api, "change", "pipeline", "brain", "image-format=nii")[0] == 0
    code, stdout, _ = run(api, "show", "pipeline", "brain")
    definition = json.loads(stdout)["definition"]
    assert definition["image-format"] == "nii"
    assert definition["rules"]["selections"][0]["name"] == "ct"  # kept

    # The API's own refusals, as one line each, exit status 1
    code, _, stderr = run(api, "remove", "pipeline", "brain")
    assert code == 1
    assert stderr.startswith("error: 409") and "BRAIN_AI" in stderr
    assert stderr.count("\n") == 1
    code, _, stderr = run(api, "add", "destination", "name=bad", "aeTitle=X", "hostIp=h", "port=0")
    assert code == 1 and stderr.startswith("error: 422") and "port" in stderr
    code, _, stderr = run(api, "add", "ae-title", "aeTitle=OTHER", "pipeline=nope")
    assert code == 1 and "nope" in stderr
    code, _, stderr = run(api, "add", "source", "aeTitle=MODALITY", "hostIp=10.1.2.3")
    assert code == 1 and stderr.startswith("error: 409")
    code, _, stderr = run(api, "change", "source", "ghost", "hostIp=1.1.1.1")
    assert code == 1 and stderr.startswith("error: 404")
    assert "Traceback" not in stderr

    for kind, name in (("ae-title", "BRAIN_AI"), ("pipeline", "brain"), ("source", "MODALITY")):
        code, stdout, stderr = run(api, "remove", kind, name)
        assert (code, stderr) == (0, ""), stderr
    code, stdout, _ = run(api, "list", "pipelines", "--json")
    assert json.loads(stdout) == []


def test_usage_token_and_unreachable(api: str, tmp_path: Path) -> None:
    code, _, stderr = run(api, "list", "widgets")
    assert code == 2 and "unknown kind" in stderr
    code, _, stderr = run(api, "add", "source", "hostIp")
    assert code == 2 and "FIELD=VALUE" in stderr
    code, _, stderr = run(api, "add", "pipeline", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in stderr
    code, _, stderr = run(api, "list", "sources", token="wrong-token")
    assert code == 3 and "401" in stderr
    code, _, stderr = run(f"http://127.0.0.1:{free_port()}", "list", "sources")
    assert code == 4 and "cannot reach" in stderr


def test_echo_a_destination(api: str, tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path / "scp", ae_title="ECHOSCP").start()
    try:
        add = ["add", "destination", "name=scp", "aeTitle=ECHOSCP", "hostIp=127.0.0.1"]
        assert run(api, *add, f"port={scp.port}")[0] == 0
        code, stdout, stderr = run(api, "echo", "scp")
        assert (code, stderr) == (0, ""), stderr
        assert "success 0x0000" in stdout
    finally:
        scp.stop()
    code, _, stderr = run(api, "echo", "scp")  # nobody listens any more
    assert code == 1 and "failed" in stderr
    code, _, stderr = run(api, "echo", "nobody")
    assert code == 1 and stderr.startswith("error: 404")


def test_as_a_process(api: str) -> None:
    """The installed command as a user runs it: a refusal is one line, no traceback."""
    env = dict(os.environ, SERIESFLOW_API_URL=api, SERIESFLOW_API_TOKEN=TOKEN)
    command = [sys.executable, "-m", "seriesflow", "config"]
    bad = [*command, "add", "destination", "name=x", "aeTitle=X", "hostIp=h", "port=70000"]
    done = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: 422") and done.stderr.count("\n") == 1, done.stderr
    done = subprocess.run(
        [*command, "list", "destinations", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout) == []
