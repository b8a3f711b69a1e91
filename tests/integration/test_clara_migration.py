"""A Clara installation moves over unchanged: the Clara DICOM Adapter file, the Clara
pipeline definition and the rules a Clara selector image carried in
``./config/selection-rules.json``, with the receiver, parser and selector as processes.

Real parts only: RabbitMQ (own vhost), SeaweedFS (own bucket), dcmtk storescu as the
modality. The services log at INFO (their default).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from services.config_api.app import create_app
from shared.operator.parser import run_parser_operator
from shared.pipelines import derived_pipeline_id
from shared.samples import write_brain_mr_study
from shared.selection import load_rules_file
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from shared.volumes.convert import ConversionOptions

from .infra import dcmtk, free_port, wait_for_port
from .processes import ServiceProcess, service_environment, wait_until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "clara-migration"
CLARA_ID = "0fcdcdea89c6456fb20abc7379c54ef2"


class ServiceInFolder(ServiceProcess):
    """A service started in ``cwd``, as a Clara container started in its image's folder."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        super().__init__(service, env, log_dir)
        self.cwd = cwd

    def start(self) -> ServiceInFolder:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "seriesflow", self.service],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self


def clara_adapter_file(path: Path, port: int, **scp: object) -> Path:
    """The example's Clara file, only the port (and what ``scp`` gives) changed."""
    data = yaml.safe_load((EXAMPLE / "dicom-adapter.yaml").read_text())
    data["dicom"]["scp"].update({"port": port, "host": "127.0.0.1", **scp})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def storescu(port: int, study: Path, called: str = "NVIDIADGX100") -> None:
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "--aetitle",
            "DCM4CHEE",
            "--call",
            called,
            "--scan-directories",
            "--recurse",
            "--required",
            "127.0.0.1",
            str(port),
            str(study),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clara_adapter_file_and_pipeline_definition_run_a_study_end_to_end(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    write_brain_mr_study(study, seed=11)
    port = free_port()
    config = clara_adapter_file(tmp_path / "app.yaml", port)
    # The folder each service starts in, as a Clara image's: it carries the rules at
    # Clara's default path, and nothing names them.
    image = tmp_path / "image"
    shutil.copytree(EXAMPLE / "config", image / "config")
    env = service_environment(settings, config, EXAMPLE / "pipelines")
    for name in ("NVIDIA_CLARA_SELECTION_RULES_BASE64", "NVIDIA_CLARA_SELECTION_RULES_FILE"):
        env.pop(name, None)
    processes = [
        ServiceInFolder(name, env, tmp_path, image).start()
        for name in ("receiver", "parser", "selector")
    ]
    store = ObjectStore(settings)
    try:
        wait_for_port(port, timeout=60)
        storescu(port, study)

        def selected() -> list[str]:
            return [k for k in store.list("jobs/") if k.endswith("/output/selected-images.json")]

        logs = lambda: "\n".join(f"--- {p.service}\n{p.log()[-3000:]}" for p in processes)  # noqa: E731
        wait_until(lambda: len(selected()) == 1, 90, "selected-images.json")
        (key,) = selected()
        manifest_key = key.replace("output/selected-images.json", "manifest.json")
        manifest = json.loads(store.get_bytes(manifest_key))
        in_store = json.loads(store.get_bytes(key))
    finally:
        for process in processes:
            process.stop()
    # The Clara pipeline-id named the job's pipeline, and the T1c series was selected by
    # the rules at ./config/selection-rules.json: what operator mode selects with them.
    assert manifest["pipeline"] in (CLARA_ID, "series-selection-pipeline"), manifest
    assert manifest["called_ae_title"] == "NVIDIADGX100"
    assert list(in_store) == ["T1C"], logs()
    expected = run_parser_operator(
        study,
        tmp_path / "operator",
        ConversionOptions("mhd"),
        load_rules_file(EXAMPLE / "config" / "selection-rules.json"),
    )
    assert in_store == expected.selections
    # Clara's keys seriesflow does not use were reported, not silently dropped.
    receiver_log = processes[0].log()
    assert "storage.temporary: accepted from Clara, not used" in receiver_log
    assert "dicom.scp.ae-titles[0].processors: accepted from Clara, not used" in receiver_log
    assert "Traceback" not in logs()


@pytest.mark.parametrize("service", ["receiver", "parser"])
def test_a_misspelt_key_stops_a_service_naming_its_path(
    settings: ServiceSettings, tmp_path: Path, service: str
) -> None:
    misspelt = {"reject-unknown-source": False}
    config = clara_adapter_file(tmp_path / "app.yaml", free_port(), **misspelt)
    pipelines = tmp_path / "pipelines"
    shutil.copytree(EXAMPLE / "pipelines", pipelines)
    if service == "parser":  # a pipeline definition with a misspelt operator key
        definition = yaml.safe_load((pipelines / "series-selection-pipeline.yaml").read_text())
        definition["operators"][1]["variabels"] = {"NVIDIA_CLARA_IMAGE_FORMAT": "nii"}
        (pipelines / "series-selection-pipeline.yaml").write_text(yaml.safe_dump(definition))
    env = service_environment(settings, config, pipelines)
    process = ServiceProcess(service, env, tmp_path).start()
    assert process.process is not None
    try:
        code = process.process.wait(60)
    finally:
        process.stop()
    assert code != 0
    log = process.log()
    if service == "receiver":
        assert (
            "dicom.scp.reject-unknown-source: unknown key; did you mean reject-unknown-sources?"
            in log
        ), log
    else:
        assert "operators[1].variabels: unknown key; did you mean variables?" in log, log
    assert "Traceback" not in log


def test_a_clara_pipeline_registered_through_the_api_answers_its_id_and_runs(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    """Clara's ``create pipelines`` then ``POST /api/config/claraaetitle`` with the id it
    answered; the file says ``read-aetitles-from-crd: true``, so its own AE title is not
    used: the AE title comes from the API only."""
    study = tmp_path / "study"
    write_brain_mr_study(study, seed=12)
    port = free_port()
    config = clara_adapter_file(tmp_path / "app.yaml", port, **{"read-aetitles-from-crd": True})
    data = yaml.safe_load(config.read_text())
    data.pop("pipeline-mappings")  # its AE title is set aside; the API maps the new one
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    image = tmp_path / "image"
    shutil.copytree(EXAMPLE / "config", image / "config")
    env = service_environment(settings, config, pipelines)
    processes = [
        ServiceInFolder(name, env, tmp_path, image).start()
        for name in ("receiver", "parser", "selector")
    ]
    store = ObjectStore(settings)
    store.ensure_bucket()
    api = TestClient(create_app(settings, store, None), base_url="http://localhost:5000")
    try:
        definition = yaml.safe_load(
            (EXAMPLE / "pipelines" / "series-selection-pipeline.yaml").read_text()
        )
        created = api.post("/api/v1/pipelines", json=definition)
        assert created.status_code == 201, created.text
        pipeline_id = created.json()["definition"]["id"]
        assert pipeline_id == derived_pipeline_id("series-selection-pipeline")
        title = api.post(
            "/api/config/claraaetitle",
            json={"name": "brain", "pipelineId": pipeline_id, "aeTitle": "BRAINMODEL"},
        )
        assert title.status_code == 200, title.text
        assert title.json()["spec"]["pipelineId"] == pipeline_id
        # Clara's meaning of read-aetitles-from-crd: true: the file's AE title is not used.
        listed = api.get("/api/config/claraaetitle").json()["items"]
        assert [i["spec"]["aeTitle"] for i in listed] == ["BRAINMODEL"]

        wait_for_port(port, timeout=60)

        def echo() -> bool:
            run = subprocess.run(
                [dcmtk("echoscu"), "-aet", "DCM4CHEE", "-aec", "BRAINMODEL", "127.0.0.1",
                 str(port)],
                capture_output=True, timeout=30,
            )  # fmt: skip
            return run.returncode == 0

        wait_until(echo, 30, "C-ECHO to the AE title created through the API")
        storescu(port, study, called="BRAINMODEL")

        def selected() -> list[str]:
            return [k for k in store.list("jobs/") if k.endswith("/output/selected-images.json")]

        wait_until(lambda: len(selected()) == 1, 90, "selected-images.json")
        in_store = json.loads(store.get_bytes(selected()[0]))
    finally:
        for process in processes:
            process.stop()
    assert list(in_store) == ["T1C"], "\n".join(p.log()[-3000:] for p in processes)
    assert "Traceback" not in "".join(p.log() for p in processes)
