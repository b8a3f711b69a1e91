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


def test_the_receiver_spools_on_a_named_volume_its_user_can_write() -> None:
    """Instances answered Success wait for upload in the spool: it must outlive the
    container (a named volume) and be writable by the image's user (uid 10001), which
    the Dockerfile gives the mount point (a new named volume copies its ownership)."""
    data = compose()
    receiver = data["services"]["receiver"]
    spool = receiver["environment"]["SERIESFLOW_SPOOL_DIR"]
    (mount,) = [v for v in receiver["volumes"] if isinstance(v, dict) and v["target"] == spool]
    assert mount["type"] == "volume" and mount["source"] in data["volumes"]
    assert not mount.get("read_only")
    for name in SERVICES:
        if name != "receiver":
            targets = [v.get("target") for v in data["services"][name].get("volumes", [])]
            assert spool not in targets, f"{name} must not share the receiver's spool"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"-o 10001 -g 10001 -m 0700 /var/lib/seriesflow {spool}" in dockerfile
    assert f"ENV SERIESFLOW_SPOOL_DIR={spool}" in dockerfile
