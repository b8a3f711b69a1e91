"""docker-compose's service mode matches the code: real commands, a configuration and
pipelines that load, routes to destinations that exist, and the backbone awaited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from seriesflow.cli import app
from shared.config import load_config
from shared.pipelines import PipelineRegistry

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("receiver", "parser", "selector", "exporter", "config-api")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_every_service_runs_a_real_command_after_the_backbone() -> None:
    commands = {c.name for c in app.registered_commands}
    services = compose()["services"]
    for name in SERVICES:
        service = services[name]
        assert service["command"][0] in commands
        assert service["depends_on"] == {
            "rabbitmq": {"condition": "service_healthy"},
            "minio": {"condition": "service_healthy"},
        }
        assert service["environment"]["SERIESFLOW_CONFIG"] == "/etc/seriesflow/config.yaml"
    api = services["config-api"]
    assert api["environment"]["SERIESFLOW_API_TOKEN"].startswith("${SERIESFLOW_API_TOKEN:?")


def test_compose_configuration_and_pipelines_load_and_agree() -> None:
    config = load_config(REPO / "deploy" / "compose" / "config.yaml")
    pipelines = PipelineRegistry.load(REPO / "deploy" / "compose" / "pipelines")
    destinations = {d.name for d in config.dicom.scu.destinations}
    for ae in config.dicom.scp.ae_titles:
        pipeline_name = config.pipeline_for(ae.ae_title)
        assert pipeline_name is not None
        pipeline = pipelines.get(pipeline_name)
        assert pipeline is not None, pipeline_name
        assert pipeline.destinations() <= destinations
    receiver_port = compose()["services"]["receiver"]["ports"][0]["target"]
    assert receiver_port == config.dicom.scp.port
