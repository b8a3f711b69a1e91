"""The compose stack CI runs is the one users run: the README's commands, docker-compose.yml
unchanged but for images, and a health check on every service so `up --wait` means ready."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "deploy" / "ci" / "docker-compose.ci.yml"
COMPOSE_CI = ROOT / "scripts" / "compose-ci.sh"
ENGINE = ROOT / "scripts" / "docker-engine.sh"
README = ROOT / "README.md"

# What the override may change: images, the pull policy, and what the stand-ins need.
OVERRIDABLE = {"image", "pull_policy", "init", "healthcheck"}


def _services(path: Path) -> dict[str, Any]:
    services = yaml.safe_load(path.read_text())["services"]
    assert isinstance(services, dict)
    return services


def _readme_compose_block() -> str:
    text = README.read_text()
    section = text[text.index("### With Docker Compose") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the README's compose section has a shell block"
    return match.group(1)


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in _services(COMPOSE).items():
        if "operator" in service.get("profiles", []):
            continue  # a batch job: it exits when done
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check: `up --wait` would lie"


def test_the_ci_override_changes_only_images_and_what_stand_ins_need() -> None:
    users = _services(COMPOSE)
    for name, service in _services(OVERRIDE).items():
        assert name in users, f"the override adds a service: {name}"
        assert set(service) <= OVERRIDABLE, f"{name}: {set(service) - OVERRIDABLE}"
        assert service["pull_policy"] == "never"
    assert not (set(yaml.safe_load(OVERRIDE.read_text())) - {"services"})


def test_ci_runs_the_readme_commands() -> None:
    block = _readme_compose_block()
    script = COMPOSE_CI.read_text()
    assert "docker build -t seriesflow:0.1.0 ." in block
    assert re.search(r"image_build -t seriesflow:0\.1\.0 .* \.\n", script)
    assert 'export SERIESFLOW_API_TOKEN="$(openssl rand -hex 32)"' in block
    assert '"${SERIESFLOW_API_TOKEN:-$(openssl rand -hex 32)}"' in script
    assert "docker compose up -d --wait" in block
    assert '"$DOCKER" compose up -d --wait' in script


def test_the_readme_ports_are_the_compose_defaults() -> None:
    text = README.read_text()
    compose = COMPOSE.read_text()
    for variable, port in (
        ("RECEIVER_PORT", 11112),
        ("CONFIG_API_PORT", 5000),
        ("ORTHANC_HTTP_PORT", 8042),
        ("ORTHANC_DICOM_PORT", 4242),
        ("MINIO_PORT", 9000),
        ("RABBITMQ_PORT", 5672),
        ("RABBITMQ_MANAGEMENT_PORT", 15672),
    ):
        assert f"${{{variable}:-{port}}}" in compose, variable
        assert f"`{variable}`" in text and str(port) in text, variable


def test_the_compose_binary_checksum_is_recorded() -> None:
    text = ENGINE.read_text()
    assert re.search(r"^COMPOSE_SHA256=[0-9a-f]{64}$", text, re.M)
    assert re.search(r"^COMPOSE_VERSION=2\.\d+\.\d+$", text, re.M)
    assert "--iptables=false --ip-forward=false --ip-masq=false --bridge=none" in text


def test_the_dockerfile_builds_without_a_registry_frontend_and_takes_extra_cas() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a frontend image from a registry"
    builder, runtime = text.split("AS runtime", 1)
    assert 'ARG EXTRA_CA_CERTS=""' in builder and "PIP_CERT" in builder
    assert "EXTRA_CA_CERTS" not in runtime, "the extra CAs stay out of the image"
