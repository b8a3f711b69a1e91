"""deploy/services/ (service mode on Kubernetes) agrees with the code.

No cluster is needed. The manifests are parsed and checked for what goes wrong in practice:
a command the CLI does not have, an environment variable no settings class reads, a value
the settings refuse, a container that could run as root or write its root filesystem, a
config file that does not load or routes to a destination it does not define, a probe or
Service aimed at the wrong port. ``kubectl kustomize`` is run too when kubectl is installed.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import ValidationError

from seriesflow.cli import app
from services.config_api.settings import ConfigApiSettings
from services.exporter.settings import ExporterSettings
from services.parser.settings import ParserSettings
from services.receiver.settings import ReceiverSettings
from services.selector.settings import SelectorSettings
from shared.config import SeriesflowConfig, load_config
from shared.pipelines import PipelineRegistry
from shared.settings import ServiceSettings
from shared.tokens import parse_tokens

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / "deploy" / "services"
KUSTOMIZATION = SERVICES_DIR / "kustomization.yaml"
SECRET_EXAMPLE = SERVICES_DIR / "secret.example.yaml"
CONFIG_DIR = SERVICES_DIR / "config"
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

SECRET_NAME = "seriesflow-backbone"
SETTINGS: dict[str, type[ServiceSettings]] = {
    "receiver": ReceiverSettings,
    "parser": ParserSettings,
    "selector": SelectorSettings,
    "exporter": ExporterSettings,
    "config-api": ConfigApiSettings,
}
REPLICAS = {"receiver": 1, "parser": 2, "selector": 1, "exporter": 1, "config-api": 1}
CONSUMERS = ("parser", "selector", "exporter")
GRACEFUL = ("parser", "exporter")  # they finish the message in hand on SIGTERM
SECRET_SETTINGS = frozenset(
    {"SERIESFLOW_AMQP_URL", "SERIESFLOW_S3_ACCESS_KEY", "SERIESFLOW_S3_SECRET_KEY"}
)
TOKEN_SETTINGS = frozenset({"SERIESFLOW_API_TOKEN", "SERIESFLOW_API_TOKENS"})
# They listen on 0.0.0.0, so they refuse to start without a token: the config API and the
# receiver's DICOMweb STOW-RS (services/receiver/stow.py).
TOKEN_SERVICES = frozenset({"config-api", "receiver"})


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in SERVICES_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def _documents() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every YAML document under deploy/services/, config files included."""
    found = []
    for path in _yaml_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), f"{path}: a document that is not a mapping"
                found.append((path, document))
    return tuple(found)


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    """The Kubernetes objects: every document outside config/ but the kustomization."""
    return [
        (path, doc)
        for path, doc in _documents()
        if CONFIG_DIR not in path.parents and path != KUSTOMIZATION
    ]


def _kustomization() -> dict[str, Any]:
    document = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(document, dict)
    return document


def _listed() -> list[tuple[Path, dict[str, Any]]]:
    """The objects of the files the kustomization lists."""
    resources = {SERVICES_DIR / r for r in _kustomization()["resources"]}
    return [(path, doc) for path, doc in _manifests() if path in resources]


WORKLOADS = ("Deployment", "StatefulSet")


def _deployments() -> dict[str, dict[str, Any]]:
    """The workloads (Deployments, and the receiver's StatefulSet) by service (their
    `app.kubernetes.io/component` label)."""
    found: dict[str, dict[str, Any]] = {}
    for _, doc in _listed():
        if doc["kind"] in WORKLOADS:
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            assert component not in found, f"two Deployments for {component}"
            found[component] = doc
    return found


def _pod(service: str) -> dict[str, Any]:
    pod: dict[str, Any] = _deployments()[service]["spec"]["template"]["spec"]
    return pod


def _container(service: str) -> dict[str, Any]:
    (container,) = _pod(service)["containers"]
    assert isinstance(container, dict)
    return container


def _services() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _listed() if d["kind"] == "Service"}


def _generator(name: str) -> dict[str, Any]:
    (generator,) = [g for g in _kustomization()["configMapGenerator"] if g["name"] == name]
    assert isinstance(generator, dict)
    return generator


def _settings_literals() -> dict[str, str]:
    literals = _generator("seriesflow-settings")["literals"]
    return dict(str(item).split("=", 1) for item in literals)


def _secret_example() -> dict[str, str]:
    (secret,) = [d for p, d in _manifests() if p == SECRET_EXAMPLE]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET_NAME
    data: dict[str, str] = secret["stringData"]
    return data


def _environment(service: str) -> dict[str, str]:
    """The container's environment as Kubernetes builds it (secrets: the example values)."""
    container = _container(service)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == "seriesflow-settings"
            env |= _settings_literals()
        elif "secretRef" in source:
            assert source["secretRef"]["name"] == SECRET_NAME
            env |= _secret_example()
        else:
            pytest.fail(f"{service}: unexpected envFrom {source}")
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET_NAME, variable
        assert ref["key"] in _secret_example(), f"{service}: the Secret has no {ref['key']}"
        env[variable["name"]] = _secret_example()[ref["key"]]
    return env


def _built_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The service's settings object built from its container's environment (only)."""
    for name in _known_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in _environment(service).items():
        monkeypatch.setenv(name, value)
    try:
        return SETTINGS[service]()
    except ValidationError as exc:
        pytest.fail(f"seriesflow {service} would refuse this environment: {exc}")


def _receiver_settings(monkeypatch: pytest.MonkeyPatch) -> ReceiverSettings:
    settings = _built_settings("receiver", monkeypatch)
    assert isinstance(settings, ReceiverSettings)
    return settings


def _settings_env_names(cls: type[ServiceSettings]) -> set[str]:
    """The SERIESFLOW_* names a settings class reads: prefix + field, or the field's alias."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        names.add(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return {n for n in names if n.startswith("SERIESFLOW_")}


def _known_env_names() -> set[str]:
    names: set[str] = set()
    classes: list[type[ServiceSettings]] = [ServiceSettings, *SETTINGS.values()]
    for cls in classes:
        names |= _settings_env_names(cls)
    return names


def _cli_error(args: list[str]) -> str | None:
    """Why ``seriesflow ARGS`` would be refused by the CLI's parser, or None if it parses."""
    command: Any = typer.main.get_command(app)
    name, rest = args[0], args[1:]
    if name not in command.commands:
        return f"seriesflow has no command {name!r} (has {sorted(command.commands)})"
    try:
        command.commands[name].make_context(f"seriesflow {name}", list(rest))
    except Exception as exc:  # click's UsageError / BadParameter, whichever click it is
        if not hasattr(exc, "format_message"):
            raise
        return f"seriesflow {' '.join(args)}: {exc.format_message()}"
    return None


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i|[kMG])?", str(quantity))
    assert match, f"not a Kubernetes memory quantity: {quantity!r}"
    return int(float(match.group(1)) * units.get(match.group(2) or "", 1))


def _port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's port, a named one resolved against the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == port]
    assert isinstance(number, int)
    return number


@functools.cache
def _config() -> SeriesflowConfig:
    return load_config(CONFIG_DIR / "config.yaml")


def _walk_env_names(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("SERIESFLOW_"):
                yield key
            if key == "name" and isinstance(value, str) and value.startswith("SERIESFLOW_"):
                yield value
            yield from _walk_env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_env_names(item)
    elif isinstance(node, str):
        yield from re.findall(r"^(SERIESFLOW_[A-Z0-9_]+)=", node)


# --------------------------------------------------------------------------------------------
# Files and the kustomization
# --------------------------------------------------------------------------------------------


def test_every_yaml_file_parses_and_every_manifest_has_a_kind() -> None:
    assert len(_yaml_files()) >= 9
    for path, doc in _manifests():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        assert "namespace" not in doc["metadata"], f"{path}: namespace-agnostic, no namespace"
    assert (SERVICES_DIR / "README.md").is_file()


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = _kustomization()
    assert "namespace" not in kustomization, "namespace-agnostic: -n or an overlay chooses"
    resources = kustomization["resources"]
    for resource in resources:
        assert (SERVICES_DIR / resource).is_file(), f"kustomization lists {resource}: no file"
    manifest_files = {p.relative_to(SERVICES_DIR).as_posix() for p, _ in _manifests()}
    assert set(resources) == manifest_files - {SECRET_EXAMPLE.name}
    assert "Secret" not in {d["kind"] for _, d in _listed()}, "real secrets stay out of git"
    assert "secretGenerator" not in kustomization


def test_the_image_is_seriesflow_at_the_project_version() -> None:
    (image,) = [i for i in _kustomization()["images"] if i["name"] == "seriesflow"]
    assert str(image["newTag"]) == VERSION
    for service in SETTINGS:
        container = _container(service)
        assert container["image"] == f"seriesflow:{VERSION}", service
        assert "command" not in container, f"{service}: keep the image's `seriesflow` entrypoint"


def test_config_generators_cover_every_config_file() -> None:
    config_files = {p.relative_to(SERVICES_DIR).as_posix() for p in CONFIG_DIR.rglob("*.y*ml")}
    generated = set(_generator("seriesflow-config")["files"])
    generated |= set(_generator("seriesflow-pipelines")["files"])
    assert generated == config_files, "every file in config/ is in a ConfigMap, and only those"
    assert generated == {"config/config.yaml", "config/pipelines/brain_t1c.yaml"}


# --------------------------------------------------------------------------------------------
# The Deployments
# --------------------------------------------------------------------------------------------


def test_the_five_services_exist_with_their_replicas() -> None:
    deployments = _deployments()
    assert set(deployments) == set(SETTINGS)
    for service, deployment in deployments.items():
        assert deployment["apiVersion"] == "apps/v1"
        assert deployment["metadata"]["name"] == f"seriesflow-{service}"
        assert deployment["spec"]["replicas"] == REPLICAS[service], service
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{service}: the selector matches its pods"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_runs_its_own_seriesflow_command(service: str) -> None:
    args = _container(service)["args"]
    assert all(isinstance(a, str) for a in args), f"{service}: args must be strings: {args}"
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert args[0] in commands, f"{args[0]!r} is not a seriesflow command"
    assert args[0] == service
    assert _cli_error(args) is None
    if service == "config-api":
        assert args == ["config-api", "--host", "0.0.0.0", "--port", "5000"]
    else:
        assert args == [service]


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_is_non_root_with_a_read_only_root(service: str) -> None:
    pod = _pod(service)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod.get("automountServiceAccountToken") is False
    assert pod.get("enableServiceLinks") is False, (
        "service links would inject SERIESFLOW_<SERVICE>_* variables into the environment"
    )
    container = _container(service)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security.get("runAsUser", 10001) != 0

    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]], "a writable /tmp on a read-only root filesystem"
    claims = {
        c["metadata"]["name"]
        for c in _deployments()[service]["spec"].get("volumeClaimTemplates", [])
    }
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes.keys() | claims, f"{service}: no volume {mount['name']}"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_has_resources_and_a_grace_period(service: str) -> None:
    pod = _pod(service)
    resources = _container(service)["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), f"{service}: resources.{part}"
    limit = _memory_bytes(resources["limits"]["memory"])
    assert _memory_bytes(resources["requests"]["memory"]) <= limit
    if service == "parser":
        assert limit >= 2**30, "a 300-slice CT needs about 1 GiB with headroom"
    else:
        assert 256 * 2**20 <= limit <= 512 * 2**20, f"{service}: {limit}"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert grace >= (60 if service in GRACEFUL else 10), service


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_mounts_the_config_where_the_settings_point(service: str) -> None:
    pod = _pod(service)
    container = _container(service)
    env = _environment(service)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    config_mount = mounts[env["SERIESFLOW_CONFIG"]]
    assert config_mount["mountPath"] == "/etc/seriesflow/config.yaml"
    assert config_mount["subPath"] == "config.yaml"
    assert volumes[config_mount["name"]]["configMap"]["name"] == "seriesflow-config"

    pipelines_mount = mounts[env["SERIESFLOW_PIPELINES"]]
    assert pipelines_mount["mountPath"] == "/etc/seriesflow/pipelines"
    assert "subPath" not in pipelines_mount
    assert volumes[pipelines_mount["name"]]["configMap"]["name"] == "seriesflow-pipelines"
    for mount in (config_mount, pipelines_mount):
        assert mount.get("readOnly") is True


def test_every_seriesflow_variable_is_one_the_settings_read() -> None:
    known = _known_env_names()
    assert {"SERIESFLOW_AMQP_URL", "SERIESFLOW_API_TOKEN", "SERIESFLOW_MIN_SLICES"} <= known
    used: dict[str, set[str]] = {}
    for path, doc in _documents():
        if CONFIG_DIR in path.parents:
            continue
        for name in _walk_env_names(doc):
            used.setdefault(name, set()).add(path.name)
    assert "SERIESFLOW_S3_BUCKET" in used and "SERIESFLOW_AMQP_URL" in used
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert not unknown, f"variables no settings class reads: {unknown}"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_environment_is_accepted_by_the_services_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _environment(service)
    assert env.keys() >= SECRET_SETTINGS, f"{service}: the credentials come from the Secret"
    for variable in _container(service).get("env", []):
        if variable["name"] in SECRET_SETTINGS | TOKEN_SETTINGS:
            assert "secretKeyRef" in variable.get("valueFrom", {}), (
                f"{service}: {variable['name']} comes from the Secret, not a literal"
            )
    for name in SECRET_SETTINGS | TOKEN_SETTINGS:
        assert name not in _settings_literals(), f"{name} is a secret, not a ConfigMap literal"
    settings = _built_settings(service, monkeypatch)
    assert settings.config == Path("/etc/seriesflow/config.yaml")
    assert settings.pipelines == Path("/etc/seriesflow/pipelines")
    assert settings.amqp_url.get_secret_value().startswith("amqp")


def test_config_api_and_stow_take_the_token_from_the_secret_because_they_bind_every_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "0.0.0.0" in _container("config-api")["args"]
    assert _receiver_settings(monkeypatch).stow_host == "0.0.0.0"
    assert TOKEN_SETTINGS & _secret_example().keys(), "the example Secret shows the token key"
    for service in sorted(TOKEN_SERVICES):
        container = _container(service)
        assert not any("secretRef" in s for s in container.get("envFrom", [])), (
            f"{service}: the token by its key, not the whole Secret"
        )
        tokens = [v for v in container.get("env", []) if v["name"] in TOKEN_SETTINGS]
        assert tokens, f"{service} refuses 0.0.0.0 without SERIESFLOW_API_TOKEN(S)"
        for variable in tokens:
            assert "value" not in variable, f"{service}: {variable['name']} is never a literal"
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref == {"name": SECRET_NAME, "key": variable["name"]}, service
        settings = _built_settings(service, monkeypatch)
        assert isinstance(settings, (ConfigApiSettings, ReceiverSettings))
        assert parse_tokens(settings.api_token, settings.api_tokens), (
            f"{service}: the Secret's token reaches the settings"
        )
    for service in SETTINGS.keys() - TOKEN_SERVICES:
        assert not TOKEN_SETTINGS & _environment(service).keys(), (
            f"{service} does not need the API token"
        )


# --------------------------------------------------------------------------------------------
# Probes and Services
# --------------------------------------------------------------------------------------------


def test_probes_config_api_http_receiver_dicom_consumers_broker_readiness() -> None:
    api = _container("config-api")
    for probe in ("readinessProbe", "livenessProbe"):
        http = api[probe]["httpGet"]
        assert http["path"] == "/health" and _port(api, http["port"]) == 5000

    receiver = _container("receiver")
    scp_port = _config().dicom.scp.port
    for probe in ("readinessProbe", "livenessProbe"):
        command = receiver[probe]["exec"]["command"]
        assert command == ["python", "-m", "shared.healthcheck", "dicom", str(scp_port)]
        assert "tcpSocket" not in receiver[probe], "a DICOM answer, not a listening socket"

    for service in CONSUMERS:
        container = _container(service)
        assert container["readinessProbe"]["exec"]["command"] == [
            "python",
            "-m",
            "shared.healthcheck",
            "broker",
        ]
        assert not {"livenessProbe", "startupProbe"} & container.keys()
        assert not container.get("ports"), f"{service} serves no port"


def test_receiver_listens_on_the_configured_scp_and_stow_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _receiver_settings(monkeypatch)
    ports = {p["name"]: p for p in _container("receiver")["ports"]}
    assert {name: p["containerPort"] for name, p in ports.items()} == {
        "dicom": _config().dicom.scp.port,
        "stow": settings.stow_port,
    }
    assert all(p["protocol"] == "TCP" for p in ports.values())
    assert _config().dicom.scp.port == 11112 and _config().dicom.scp.host == "0.0.0.0"
    assert settings.stow_port == 8080 and settings.stow_host == "0.0.0.0"
    # /metrics is scraped through the pod annotation (no declared port), on its own port.
    annotations = _deployments()["receiver"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port == 9100
    assert settings.metrics_host == "0.0.0.0"
    assert settings.metrics_port not in {p["containerPort"] for p in ports.values()}


def test_receiver_stow_request_limit_fits_its_memory_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A STOW-RS request is held in memory, up to about twice its size, and at most
    # stow_max_requests are handled at once (docs/receiver.md): the largest ones accepted,
    # all at once, take at most half the container's memory limit.
    limit = _memory_bytes(_container("receiver")["resources"]["limits"]["memory"])
    settings = _receiver_settings(monkeypatch)
    max_bytes, at_once = settings.stow_max_bytes, settings.stow_max_requests
    assert max_bytes == 64 * 2**20
    assert at_once * 2 * max_bytes <= limit // 2, (
        f"{at_once} requests of {max_bytes} bytes at once, {limit} limit"
    )


@pytest.mark.parametrize(
    ("name", "service", "ports"),
    [
        ("seriesflow-receiver", "receiver", {"dicom": 11112, "stow": 8080}),
        ("seriesflow-config-api", "config-api", {"http": 5000}),
    ],
)
def test_services_select_their_pods_and_reach_the_container_ports(
    name: str, service: str, ports: dict[str, int]
) -> None:
    assert set(_services()) == {"seriesflow-receiver", "seriesflow-config-api"}
    spec = _services()[name]["spec"]
    assert spec.get("type", "ClusterIP") == "ClusterIP"
    labels = _deployments()[service]["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= labels.items(), f"{name} selects the {service} pods"
    assert {p["name"]: p["port"] for p in spec["ports"]} == ports
    container = _container(service)
    for service_port in spec["ports"]:
        assert service_port["targetPort"] == service_port["name"], "by the container's name"
        assert _port(container, service_port["targetPort"]) == service_port["port"]
        assert service_port.get("protocol", "TCP") == "TCP"


# --------------------------------------------------------------------------------------------
# The DICOM configuration and pipelines
# --------------------------------------------------------------------------------------------


def test_config_and_pipelines_load_and_every_route_has_a_destination() -> None:
    config = _config()
    registry = PipelineRegistry.load(CONFIG_DIR / "pipelines")
    pipelines = registry.all()
    assert [p.name for p in pipelines] == ["brain_t1c"]
    for pipeline in pipelines:
        assert pipeline.routes, f"{pipeline.name}: routes nowhere"
        for destination in pipeline.destinations():
            assert config.destination(destination) is not None, (
                f"pipeline {pipeline.name} routes to {destination!r}, not in dicom.scu"
            )
    for entry in config.dicom.scp.ae_titles:
        key = config.pipeline_for(entry.ae_title)
        assert key is not None, f"AE title {entry.ae_title} runs no pipeline"
        assert registry.get(key) is not None, f"{entry.ae_title}: no pipeline {key}"


# --------------------------------------------------------------------------------------------
# kubectl kustomize
# --------------------------------------------------------------------------------------------


def test_kubectl_kustomize_renders_the_services() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(SERVICES_DIR)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == ["ConfigMap"] * 3 + ["Deployment"] * 4 + ["Service"] * 2 + ["StatefulSet"]
    config_maps = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    image = _kustomization()["images"][0]
    for deployment in (d for d in rendered if d["kind"] in WORKLOADS):
        assert "namespace" not in deployment["metadata"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == f"{image['newName']}:{image['newTag']}"
        referenced = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        referenced |= {
            s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s
        }
        assert referenced and referenced <= config_maps, "generated names are substituted"
        assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == "seriesflow"


def test_the_receiver_is_a_statefulset_with_its_spool_on_a_claim_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C-STORE is answered once an instance is fsynced in the local spool: the spool must
    outlive the pod (a PersistentVolumeClaim per replica, kept when the pod or the
    StatefulSet goes), be writable by uid 10001 on a read-only root (fsGroup), and hold
    more than the spool's limit."""
    workload = _deployments()["receiver"]
    assert workload["kind"] == "StatefulSet"
    assert workload["spec"]["serviceName"] == "seriesflow-receiver"
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = _memory_bytes(claim["spec"]["resources"]["requests"]["storage"])
    settings = _receiver_settings(monkeypatch)
    assert settings.spool_dir is not None
    (mount,) = [
        m for m in _container("receiver")["volumeMounts"] if m["name"] == claim["metadata"]["name"]
    ]
    assert mount["mountPath"] == str(settings.spool_dir)
    assert not mount.get("readOnly")
    assert _pod("receiver")["securityContext"]["fsGroup"] == 10001
    assert settings.spool_max_bytes <= size // 2, "room for what is uploaded meanwhile"
    for service in SETTINGS:
        if service != "receiver":
            assert _deployments()[service]["kind"] == "Deployment"
