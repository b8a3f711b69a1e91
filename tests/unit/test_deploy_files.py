"""The deployment files agree with the code: Dockerfile, .dockerignore, docker-compose.yml, deploy/.

No container engine is needed. The files are parsed and checked for what goes wrong in
practice: a command the CLI does not have, an environment variable the code never reads, a
port published on every interface, a Dockerfile or manifest that does not exist, an image
that runs as root, versions that drift apart. ``docker compose config`` and
``kubectl kustomize`` are run too when those tools are installed.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import ValidationError

from seriesflow.cli import app
from shared.operator.settings import OperatorSettings
from shared.selection.parsing import parse_rules

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
CLARA_RULES = ROOT / "examples" / "rules" / "clara-t1c.json"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION: str = PYPROJECT["project"]["version"]

CODE_DIRS = ("seriesflow", "shared", "services")
ENV_NAME = re.compile(r"(?<![A-Za-z0-9_])(?:NVIDIA_CLARA|SERIESFLOW)_[A-Z0-9_]+")
ENV_PREFIX = re.compile(r"""env_prefix\s*=\s*["']([A-Za-z0-9_]+)["']""")
OPERATOR_ENV = (
    "NVIDIA_CLARA_IMAGE_FORMAT",
    "NVIDIA_CLARA_SELECTION_RULES_FILE",
    "NVIDIA_CLARA_SELECTION_RULES_BASE64",
    "SERIESFLOW_MIN_SLICES",
)
# Service mode's settings, fixed by the issue that builds the services; docker-compose.yml
# already carries them in its `x-seriesflow-env` anchor.
SERVICE_ENV = frozenset(
    {
        "SERIESFLOW_CONFIG",
        "SERIESFLOW_PIPELINES",
        "SERIESFLOW_AMQP_URL",
        "SERIESFLOW_S3_ENDPOINT",
        "SERIESFLOW_S3_ACCESS_KEY",
        "SERIESFLOW_S3_SECRET_KEY",
        "SERIESFLOW_S3_BUCKET",
        "SERIESFLOW_S3_SECURE",
    }
)
BACKBONE = ("rabbitmq", "minio", "orthanc")
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _cli_error(args: list[str]) -> str | None:
    """Why ``seriesflow ARGS`` would be refused by the CLI's parser, or None if it parses.

    Parsing runs the options' type conversions but not the command itself. Typer's command
    objects are used by duck typing: older Typer builds them from click, newer Typer from
    its own copy of click.
    """
    command: Any = typer.main.get_command(app)
    path = ["seriesflow"]
    rest = list(args)
    while isinstance(getattr(command, "commands", None), dict):
        if not rest:
            return f"{' '.join(path)} needs a subcommand"
        name = rest.pop(0)
        if name not in command.commands:
            return f"{' '.join(path)} has no subcommand {name!r} (has {sorted(command.commands)})"
        command, path = command.commands[name], [*path, name]
    try:
        command.make_context(" ".join(path), list(rest))
    except Exception as exc:  # click's UsageError / BadParameter, whichever click it is
        if not hasattr(exc, "format_message"):
            raise
        return f"{' '.join(path)} {shlex.join(rest)}: {exc.format_message()}"
    return None


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's variable interpolation, as if no variable were set: defaults apply."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        operator, default = match.group(2), match.group(3)
        return default if operator in (":-", "-") else ""

    return _INTERPOLATION.sub(replace, value)


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    units |= {"G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", quantity)
    assert match, f"not a Kubernetes memory quantity: {quantity!r}"
    return int(float(match.group(1)) * units.get(match.group(2) or "", 1))


def _image_tag(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _env_mapping(environment: Any) -> dict[str, str]:
    """A compose `environment:` (mapping or list form) as a mapping."""
    if environment is None:
        return {}
    if isinstance(environment, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in environment.items()}
    pairs = (str(item).partition("=") for item in environment)
    return {name: value for name, _, value in pairs}


# --------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.arguments)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _instructions(text: str) -> Iterator[Instruction]:
    """Logical instructions: comments dropped, backslash continuations joined."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        if logical:
            keyword, _, arguments = logical.partition(" ")
            yield Instruction(keyword.upper(), arguments.strip())
    assert not pending, "the Dockerfile ends inside a line continuation"


def _substitute(value: str, args: Mapping[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value
    )


@functools.cache
def _dockerfile() -> tuple[dict[str, str], tuple[Stage, ...]]:
    """Global ARG defaults and the build stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in _instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            base = _substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if instruction.keyword == "ARG":
                key, _, default = instruction.arguments.partition("=")
                global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return global_args, tuple(stages)


def _runtime_stage() -> Stage:
    return _dockerfile()[1][-1]


def _stage_args(stage: Stage) -> dict[str, str]:
    defaults = {}
    for instruction in stage.all("ARG"):
        key, _, default = instruction.arguments.partition("=")
        defaults[key.strip()] = default.strip()
    return defaults


def _key_values(arguments: str) -> dict[str, str]:
    """The pairs of a LABEL or ENV instruction (key=value form)."""
    return dict(word.split("=", 1) for word in shlex.split(arguments) if "=" in word)


@functools.cache
def _dockerignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((negated, re.compile(_glob_regex(pattern))))
    return tuple(rules)


def _glob_regex(pattern: str) -> str:
    """Docker's .dockerignore glob: `**` any number of folders, `*` and `?` within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def _docker_ignores(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative, '/'-separated) out of the build context.

    A pattern that matches a folder excludes (or re-includes) everything in it; the last
    pattern that matches wins.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    ignored = False
    for negated, regex in _dockerignore_rules():
        if any(regex.match(p) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerfile_base_images_are_python_pinned_to_a_minor_version() -> None:
    _, stages = _dockerfile()
    names = {s.name for s in stages if s.name}
    bases = [s.base for s in stages if s.base not in names]
    assert bases, "no FROM with an image"
    for base in bases:
        assert "$" not in base, f"FROM {base}: an ARG without a default"
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", base), (
            f"FROM {base}: use python:3.11-slim-bookworm (the minor version pyproject targets)"
        )
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_dockerfile_builds_wheels_then_installs_only_them() -> None:
    _, stages = _dockerfile()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    builder, runtime = stages[0], stages[-1]
    build_runs = " ".join(i.arguments for i in builder.all("RUN"))
    assert "pip wheel" in build_runs and "--wheel-dir /wheels" in build_runs
    runtime_runs = " ".join(i.arguments for i in runtime.all("RUN"))
    assert "pip install --no-index" in runtime_runs, "the runtime installs the built wheels only"
    assert f"from={builder.name}" in runtime_runs, "the wheels come from the builder stage"
    everything = DOCKERFILE.read_text()
    for dev_only in ("[dev]", "pip install -e", "pip install --editable"):
        assert dev_only not in everything, f"{dev_only!r}: no dev dependencies in the image"


def test_dockerfile_entrypoint_is_seriesflow_and_default_command_is_the_clara_operator() -> None:
    runtime = _runtime_stage()
    assert PYPROJECT["project"]["scripts"]["seriesflow"] == "seriesflow.launch:main"
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["seriesflow"]
    (cmd,) = runtime.all("CMD")
    assert cmd.exec_form() == ["process", "--input", "/input", "--output", "/output"]
    assert _cli_error(cmd.exec_form()) is None
    volumes = [v for i in runtime.all("VOLUME") for v in i.exec_form()]
    assert {"/input", "/output"} <= set(volumes)


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    users = _runtime_stage().all("USER")
    assert users, "the runtime stage sets USER"
    user, _, group = users[-1].arguments.partition(":")
    assert user.isdigit() and int(user) != 0, "numeric, so runAsNonRoot can verify it"
    assert not group or (group.isdigit() and int(group) != 0)
    assert user == "10001"


def test_dockerfile_environment_and_oci_labels() -> None:
    runtime = _runtime_stage()
    env: dict[str, str] = {}
    for instruction in runtime.all("ENV"):
        env |= _key_values(instruction.arguments)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"

    labels: dict[str, str] = {}
    for instruction in runtime.all("LABEL"):
        labels |= _key_values(instruction.arguments)
    args = _stage_args(runtime)
    for key in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing"
    assert _substitute(labels["org.opencontainers.image.version"], args) == VERSION, (
        "ARG VERSION's default follows pyproject.toml's version"
    )
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]


def test_dockerfile_copies_only_what_exists_and_the_context_lets_through() -> None:
    for stage in _dockerfile()[1]:
        for instruction in stage.all("COPY"):
            words = shlex.split(instruction.arguments)
            if any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not _docker_ignores(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_the_package_and_drops_everything_local() -> None:
    needed = ["pyproject.toml"]
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            relative = path.relative_to(ROOT)
            if path.is_file() and "__pycache__" not in relative.parts:
                needed.append(relative.as_posix())
    assert "shared/schemas/dicom-metadata.schema.json" in needed
    left_out = [p for p in needed if _docker_ignores(p)]
    assert not left_out, f".dockerignore excludes files the image is built from: {left_out}"

    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_deploy_files.py",
        "tests/data/ct/1.dcm",
        "bench/results/run.json",
        "sample-input/a.dcm",
        "sample-output/dicom-metadata.json",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "seriesflow/__pycache__/cli.cpython-311.pyc",
        "shared/dicom/__pycache__/files.cpython-311.pyc",
        "seriesflow.egg-info/PKG-INFO",
        "docker-compose.yml",
        "deploy/operator-job.yaml",
    ):
        assert _docker_ignores(unwanted), f"{unwanted} would be sent to the Docker build"


# --------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------


@functools.cache
def _compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _uses_seriesflow_image(service: Mapping[str, Any]) -> bool:
    image = str(service.get("image", ""))
    return "build" in service or image.split(":")[0].rsplit("/", 1)[-1] == "seriesflow"


def test_compose_backbone_services_exist_with_healthchecks() -> None:
    services = _services()
    for name in BACKBONE:
        assert name in services, f"service {name} missing"
        check = services[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert isinstance(check["test"], list) and check["test"][0] in ("CMD", "CMD-SHELL")

    rabbitmq, minio = services["rabbitmq"], services["minio"]
    assert rabbitmq["image"].startswith("rabbitmq:3.13-management")
    assert rabbitmq["healthcheck"]["test"][1:] == ["rabbitmq-diagnostics", "-q", "ping"]
    assert minio["command"] == ["server", "/data", "--console-address", ":9001"]
    assert "/minio/health/live" in " ".join(minio["healthcheck"]["test"])
    minio_env = _env_mapping(minio.get("environment"))
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert minio_env[name].startswith(f"${{{name}:-"), f"{name}: a ${{{name}:-default}}"
        assert len(_interpolate(minio_env[name])) >= (8 if "PASSWORD" in name else 3), (
            "MinIO refuses shorter credentials"
        )
    assert "orthanc" in services["orthanc"]["image"]


def test_compose_services_publish_ports_on_loopback_only() -> None:
    for name, service in _services().items():
        assert service.get("network_mode") != "host", f"{name}: host networking publishes all"
        for port in service.get("ports", []):
            if isinstance(port, Mapping):
                assert port.get("host_ip") == LOOPBACK, f"{name}: {port} not on {LOOPBACK}"
                continue
            spec = _interpolate(str(port)).split("/")[0]
            host_ip = spec.rsplit(":", 2)[0] if spec.count(":") >= 2 else None
            assert host_ip == LOOPBACK, f"{name}: port {port!r} not bound to {LOOPBACK}"


def test_compose_builds_from_existing_dockerfiles() -> None:
    builds = {n: s["build"] for n, s in _services().items() if "build" in s}
    assert "operator" in builds
    for name, build in builds.items():
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: build uses {dockerfile}, which does not exist"


def test_compose_seriesflow_services_run_real_subcommands() -> None:
    for name, service in _services().items():
        if not _uses_seriesflow_image(service):
            continue
        command = service.get("command")
        if command is None:
            continue  # the Dockerfile's CMD, checked above
        assert isinstance(command, list), f"{name}: give command in exec (list) form"
        assert _cli_error([_interpolate(str(c)) for c in command]) is None, (
            f"{name}: {_cli_error(command)}"
        )
        assert "entrypoint" not in service, f"{name}: keep the image's `seriesflow` entrypoint"


def test_compose_operator_service_is_the_clara_operator_on_sample_folders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator = _services()["operator"]
    assert operator["profiles"] == ["operator"]
    assert operator["command"] == ["process", "--input", "/input", "--output", "/output"]
    assert operator["image"] == f"seriesflow:{VERSION}"

    mounts = {v["target"]: v for v in operator["volumes"]}
    assert mounts["/input"]["source"] == "./sample-input" and mounts["/input"]["read_only"]
    assert mounts["/output"]["source"] == "./sample-output"
    assert not mounts["/output"].get("read_only")

    env = {k: _interpolate(v) for k, v in _env_mapping(operator.get("environment")).items()}
    rules_file = env.get("NVIDIA_CLARA_SELECTION_RULES_FILE")
    if rules_file:
        folder = next(t for t in mounts if rules_file.startswith(t.rstrip("/") + "/"))
        host_file = ROOT / mounts[folder]["source"] / rules_file[len(folder) :].lstrip("/")
        assert host_file.is_file(), f"{rules_file} is {host_file} on the host: missing"
        parse_rules(host_file.read_text(), str(host_file))
    _check_operator_env(env, monkeypatch)


def test_compose_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, Mapping):
                source, kind = volume.get("source"), volume.get("type")
            else:
                source = str(volume).split(":")[0]
                kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
            if kind == "volume" and source:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_compose_service_environment_anchor() -> None:
    anchor = _compose().get("x-seriesflow-env")
    assert isinstance(anchor, dict), "x-seriesflow-env: the service-mode settings"
    assert set(anchor) == SERVICE_ENV
    text = COMPOSE_FILE.read_text()
    assert "x-seriesflow-env: &seriesflow-env" in text
    env = {k: _interpolate(str(v)) for k, v in anchor.items()}
    assert env["SERIESFLOW_AMQP_URL"].startswith("amqp://")
    assert env["SERIESFLOW_AMQP_URL"].split("@", 1)[1].startswith("rabbitmq:5672")
    assert env["SERIESFLOW_S3_ENDPOINT"] == "minio:9000"
    assert env["SERIESFLOW_S3_SECURE"] in ("true", "false")
    minio = _env_mapping(_services()["minio"]["environment"])
    assert anchor["SERIESFLOW_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert anchor["SERIESFLOW_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    rabbit = _env_mapping(_services()["rabbitmq"]["environment"])
    user, password = rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]
    assert anchor["SERIESFLOW_AMQP_URL"].startswith(f"amqp://{user}:{password}@")


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    # The compose v2 binary scripts/compose-ci.sh installs (checked against its sha256), then
    # any docker-compose on PATH.
    ci_root = Path(os.environ.get("SERIESFLOW_CI_ROOT", "/var/lib/seriesflow-ci"))
    for standalone in (
        str(ci_root / "docker-config" / "cli-plugins" / "docker-compose"),
        shutil.which("docker-compose"),
    ):
        if not standalone or not Path(standalone).is_file():
            continue
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return [standalone]
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        missing = "Docker Compose v2 is not installed (`docker compose version` fails)"
        if os.environ.get("SERIESFLOW_REQUIRE_COMPOSE") == "1":  # scripts/compose-ci.sh
            pytest.fail(missing)
        pytest.skip(missing)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    environment.pop("SERIESFLOW_API_TOKEN", None)
    override = ROOT / "deploy" / "ci" / "docker-compose.ci.yml"
    for files in ([COMPOSE_FILE], [COMPOSE_FILE, override]):
        arguments = [a for f in files for a in ("-f", str(f))]

        def config(env: dict[str, str], args: list[str] = arguments) -> Any:
            return subprocess.run(
                [*command, *args, "--profile", "operator", "config", "--quiet"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )

        result = config({**environment, "SERIESFLOW_API_TOKEN": "a-token"})
        assert result.returncode == 0, result.stderr
        # The config API refuses to start without a token, and so does the file.
        refused = config(environment)
        assert refused.returncode != 0 and "SERIESFLOW_API_TOKEN" in refused.stderr


# --------------------------------------------------------------------------------------------
# deploy/ (Kubernetes)
# --------------------------------------------------------------------------------------------


@functools.cache
def _manifests() -> tuple[tuple[Path, dict[str, Any]], ...]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path == KUSTOMIZATION:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict) and "kind" in document, path
                found.append((path, document))
    return tuple(found)


def _one(kind: str) -> dict[str, Any]:
    (document,) = [d for _, d in _manifests() if d["kind"] == kind]
    return document


def _kustomization() -> dict[str, Any]:
    document = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(document, dict)
    return document


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    resources = _kustomization()["resources"]
    for resource in resources:
        assert (DEPLOY / resource).is_file(), f"kustomization lists {resource}: no such file"
    manifests = {p.name for p, _ in _manifests()}
    assert manifests == set(resources), "every manifest in deploy/ is listed, and only those"
    assert (DEPLOY / "README.md").is_file()


def test_operator_job_runs_the_process_command_as_non_root() -> None:
    job = _one("Job")
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 10001) != 0
    (container,) = pod["containers"]
    assert "command" not in container, "keep the image's `seriesflow` entrypoint"
    assert container["args"] == ["process", "--input", "/input", "--output", "/output"]
    assert _cli_error(container["args"]) is None

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    resources = container["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[part]), f"resources.{part}"
    limit = _memory_bytes(resources["limits"]["memory"])
    assert _memory_bytes(resources["requests"]["memory"]) <= limit
    assert limit >= 2**30, "a 300-slice CT needs about 1 GiB with headroom"

    # Exit statuses 1-3 are decisions, not accidents: the Job fails instead of retrying.
    fail_job = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail_job and set(fail_job[0]["onExitCodes"]["values"]) == {1, 2, 3}


def test_operator_job_volumes() -> None:
    pod = _one("Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) >= {"/input", "/output", "/tmp", "/config"}
    for path, volume in mounts.items():
        assert volume["name"] in volumes, f"{path}: no volume {volume['name']}"

    def source(path: str) -> dict[str, Any]:
        volume: dict[str, Any] = volumes[mounts[path]["name"]]
        return volume

    assert source("/input")["persistentVolumeClaim"]["claimName"] == "seriesflow-input"
    assert mounts["/input"].get("readOnly") is True
    assert source("/output")["persistentVolumeClaim"]["claimName"] == "seriesflow-output"
    assert not mounts["/output"].get("readOnly")
    assert "emptyDir" in source("/tmp"), "a writable /tmp on a read-only root filesystem"


def test_operator_job_rules_come_from_the_configmap_with_the_clara_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = _one("Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    _check_operator_env(env, monkeypatch)
    rules_path = env["NVIDIA_CLARA_SELECTION_RULES_FILE"]
    assert rules_path == "/config/selection-rules.json"

    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/config")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = _one("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    projected = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = projected.get("selection-rules.json", "selection-rules.json")
    text = config_map["data"][key]

    parse_rules(text, key)  # seriesflow's own validation
    assert json.loads(text) == json.loads(CLARA_RULES.read_text()), (
        "rules-configmap.yaml holds examples/rules/clara-t1c.json"
    )


def _check_operator_env(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's operator settings are valid as seriesflow reads them."""
    for name in OPERATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        settings = OperatorSettings()
    except ValidationError as exc:
        pytest.fail(f"seriesflow would refuse this environment {dict(env)}: {exc}")
    assert settings.image_format in ("mhd", "nii", "nii.gz")


def test_image_versions_follow_pyproject() -> None:
    job_image = _one("Job")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert _image_tag(job_image) == VERSION
    (image,) = [i for i in _kustomization()["images"] if i["name"] == job_image.split(":")[0]]
    assert str(image["newTag"]) == VERSION
    for name, service in _services().items():
        if _uses_seriesflow_image(service):
            assert _image_tag(str(service["image"])) == VERSION, name


def test_kubectl_kustomize_renders_the_job() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == ["ConfigMap", "Job"]
    (job,) = [d for d in rendered if d["kind"] == "Job"]
    image = _kustomization()["images"][0]
    expected = f"{image['newName']}:{image['newTag']}"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == expected


# --------------------------------------------------------------------------------------------
# Environment variables: every NVIDIA_CLARA_* and SERIESFLOW_* name is one the code reads.
# --------------------------------------------------------------------------------------------


@functools.cache
def _python_sources() -> tuple[str, ...]:
    texts = []
    for folder in CODE_DIRS:
        texts += [p.read_text() for p in sorted((ROOT / folder).rglob("*.py"))]
    return tuple(texts)


def _known_to_code(name: str) -> bool:
    """The name appears in the code, or a pydantic-settings prefix plus a field makes it."""
    exact = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")
    for text in _python_sources():
        if exact.search(text):
            return True
        for prefix in ENV_PREFIX.findall(text):
            if name.startswith(prefix.upper()) and len(name) > len(prefix):
                field_name = name[len(prefix) :].lower()
                if re.search(rf"\b{re.escape(field_name)}\b", text):
                    return True
    return False


def _deploy_texts() -> Iterable[tuple[str, str]]:
    yield COMPOSE_FILE.name, COMPOSE_FILE.read_text()
    for path in sorted(DEPLOY.glob("*.yaml")):
        yield f"deploy/{path.name}", path.read_text()
    yield DOCKERFILE.name, DOCKERFILE.read_text()


def test_every_environment_variable_in_the_deployment_files_is_read_by_the_code() -> None:
    used: dict[str, set[str]] = {}
    for where, text in _deploy_texts():
        for name in ENV_NAME.findall(text):
            used.setdefault(name, set()).add(where)
    assert "NVIDIA_CLARA_IMAGE_FORMAT" in used
    unknown = {name for name in used if not _known_to_code(name)}
    # Until the services exist, their settings are only a contract (the compose anchor).
    # As soon as the code reads any of them, it must read all that the files use.
    services_built = any(_known_to_code(name) for name in SERVICE_ENV)
    if not services_built:
        unknown -= SERVICE_ENV
        outside_compose = {n for n in SERVICE_ENV & used.keys() if used[n] != {COMPOSE_FILE.name}}
        assert not outside_compose, f"service settings used before the services exist: {used}"
    assert not unknown, {name: sorted(used[name]) for name in sorted(unknown)}
