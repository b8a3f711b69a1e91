"""Acceptance: a running seriesflow stack, driven as its users drive it.

A modality (dcmtk) echoes and sends studies to the receiver; results are read where users
read them (the object store, the config API, Orthanc as the PACS); operators use the
``seriesflow`` command line and curl. The same tests run against the compose stack and
against ``scripts/stack.sh`` (see conftest.py).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .stack import ROOT, Stack, Study

T1C_RULES = json.loads((ROOT / "examples" / "rules" / "clara-t1c.json").read_text())


def _sample(folder: Path, seed: int) -> Study:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "seriesflow"), "sample", "brain-mr", "--output",
         str(folder), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Study.read(folder)


def _seed() -> int:
    """A seed of its own for each study, so a stack that already ran the suite sees new UIDs."""
    return random.SystemRandom().randrange(1_000, 1_000_000)


def _routed(job: dict[str, Any]) -> bool:
    return bool(job["stage"] == "selected" and job["exports"] > 0)


def _wait_for_orthanc(
    stack: Stack, study: Study, series_uid: str, timeout: float = 120
) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    found: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        found = stack.orthanc_instances(study.study_uid)
        if len(found.get(series_uid, [])) >= len(study.series[series_uid]):
            return found
        time.sleep(0.5)
    counts = {uid: len(v) for uid, v in found.items()}
    raise AssertionError(f"Orthanc has {counts} of the study after {timeout} s\n{stack.log_tail()}")


def _assert_each_instance_once(found: dict[str, list[str]], study: Study, series_uid: str) -> None:
    assert set(found) == {series_uid}, "only the routed series reaches Orthanc"
    instances = found[series_uid]
    assert len(instances) == len(set(instances)), "an instance is stored twice"
    assert set(instances) == study.series[series_uid], "every instance of the series, no other"


@pytest.fixture(scope="module")
def brain_study(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Study, str]:
    """A brain MR study sent by a modality to SERIESFLOW; its job once exported."""
    folder = tmp_path_factory.mktemp("brain-mr")
    study = _sample(folder, _seed())
    before = stack.job_ids()
    stack.send(folder)
    job = stack.wait_for_new_job(before, _routed)
    return study, str(job["jobId"])


def test_c_echo_the_receiver(stack: Stack) -> None:
    result = stack.echo()
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unknown_called_ae_title_is_rejected(stack: Stack) -> None:
    result = stack.echo(called="NOSUCHAE")
    assert result.returncode != 0, "an association to an AE title that is not configured"


def test_selected_images_json_appears_in_the_store(
    stack: Stack, brain_study: tuple[Study, str]
) -> None:
    study, job = brain_study
    t1c = study.series_described("T1c SE AX post-contrast")
    selected = stack.stored_json(f"jobs/{job}/output/selected-images.json")
    assert list(selected) == ["T1C"]
    assert list(selected["T1C"]) == [t1c]
    # The config API serves the same document.
    response = stack.api.get(f"/api/v1/jobs/{job}/selection")
    assert response.status_code == 200, response.text
    assert response.json() == selected
    outputs = stack.api.get(f"/api/v1/jobs/{job}").json()["outputs"]
    assert {"dicom-metadata.json", "series-images.json", "selected-images.json"} <= {
        Path(o).name for o in outputs
    }


def test_the_routed_series_arrives_in_orthanc_each_instance_once(
    stack: Stack, brain_study: tuple[Study, str]
) -> None:
    study, _ = brain_study
    t1c = study.series_described("T1c SE AX post-contrast")
    _assert_each_instance_once(_wait_for_orthanc(stack, study, t1c), study, t1c)


def test_status_and_replay_against_the_stack(stack: Stack, brain_study: tuple[Study, str]) -> None:
    study, job = brain_study
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for queue in ("seriesflow.parser", "seriesflow.selector", "seriesflow.exporter"):
        assert queue in status.stdout
    assert job in status.stdout, status.stdout

    replay = stack.cli("replay", "--job", job)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    count = re.search(r"re-published (\d+) event\(s\) of job", replay.stdout)
    assert count is not None and int(count.group(1)) >= 1, replay.stdout

    dead = stack.cli("replay", "--dead-letters", "parser")
    assert dead.returncode == 0, dead.stdout + dead.stderr
    assert "dead letter" in dead.stdout

    # Replaying the whole job sends nothing twice: Orthanc still has each instance once, and
    # the job still ends selected.
    time.sleep(10)
    t1c = study.series_described("T1c SE AX post-contrast")
    _assert_each_instance_once(_wait_for_orthanc(stack, study, t1c), study, t1c)
    summary = [j for j in stack.api.get("/api/v1/jobs").json() if j["jobId"] == job]
    assert summary and summary[0]["stage"] == "selected", summary


def _curl(stack: Stack, method: str, path: str, body: str | None = None) -> tuple[int, Any]:
    """The Clara documentation's curl example, with the stack's token."""
    command = [
        "curl", "--silent", "--show-error", "--location", "--request", method,
        f"{stack.api_url}{path}",
        "--header", "Content-Type: application/json",
        "--header", f"Authorization: Bearer {stack.token}",
        "--write-out", "\n%{http_code}",
    ]  # fmt: skip
    if body is not None:
        command += ["--data-raw", body]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else None


CLARA_PIPELINE_ID = "7b9cda79ed834fdc87cd4169216c4011"


def test_clara_rest_examples_with_curl(stack: Stack) -> None:
    suffix = f"{random.SystemRandom().randrange(10**6):06d}"
    name = f"clara-brain-tumor-{suffix}"
    # The examples map an AE title to the pipeline CLARA_PIPELINE_ID, which a Clara user has
    # registered before; here it is registered through the API (it may exist from a run before).
    registered = stack.api.post(
        "/api/v1/pipelines", json={"name": CLARA_PIPELINE_ID, "rules": T1C_RULES}
    )
    assert registered.status_code in (201, 409), registered.text
    code, listed = _curl(stack, "GET", "/api/config/destinationaetitle")
    assert code == 200, json.dumps(listed)
    assert listed["kind"] == "DestinationList"

    code, created = _curl(
        stack,
        "POST",
        "/api/config/claraaetitle",
        json.dumps({"name": name, "pipelineId": CLARA_PIPELINE_ID,
                    "aeTitle": f"BTM{suffix}", "timeout": 0}),
    )  # fmt: skip
    assert code == 200, json.dumps(created)
    assert created["kind"] == "ClaraAeTitle" and created["metadata"]["name"] == name

    code, source = _curl(
        stack,
        "POST",
        "/api/config/sourceaetitle",
        json.dumps({"hostIp": "1.2.3.4", "aeTitle": f"ORT{suffix}"}),
    )
    assert code == 200, json.dumps(source)
    assert source["kind"] == "Source"

    code, destination = _curl(
        stack,
        "POST",
        "/api/config/destinationaetitle",
        json.dumps({"name": f"pacs-{suffix}", "hostIp": "10.20.30.40",
                    "aeTitle": "ARCHIVEX", "port": 104}),
    )  # fmt: skip
    assert code == 200, json.dumps(destination)
    assert destination["kind"] == "Destination"

    code, listed = _curl(stack, "GET", "/api/config/destinationaetitle")
    assert code == 200 and f"pacs-{suffix}" in {i["metadata"]["name"] for i in listed["items"]}

    # Clara's DELETE example carries a body, which is ignored.
    code, deleted = _curl(
        stack,
        "DELETE",
        f"/api/config/claraaetitle/{name}",
        json.dumps({"name": "clara-brain-tumor1", "pipelineId": "7b9cda79ed834fdc87cd4169216c4011",
                    "aeTitle": "BrainTumor1", "timeout": 0}),
    )  # fmt: skip
    assert code == 200, json.dumps(deleted)
    assert deleted == {**deleted, "kind": "Status", "status": "Success"}
    for kind, item in (("sourceaetitle", f"ORT{suffix}"), ("destinationaetitle", f"pacs-{suffix}")):
        code, body = _curl(stack, "DELETE", f"/api/config/{kind}/{item}")
        assert code == 200, body


def test_a_pipeline_and_ae_title_created_through_the_api_are_used_by_the_next_study(
    stack: Stack, tmp_path: Path
) -> None:
    suffix = f"{random.SystemRandom().randrange(10**6):06d}"
    pipeline = f"flair_{suffix}"
    ae_title = f"FLAIR{suffix}"
    created = stack.api.post(
        "/api/v1/pipelines",
        json={
            "name": pipeline,
            "image-format": "nii.gz",
            "rules": {"selections": [{"name": "FLAIR", "conditions": {
                "Modality": "(?i)^MR", "SeriesDescription": "(?i)FLAIR"}}]},
            "routes": [{"selection": "FLAIR", "destinations": ["orthanc"]}],
        },
    )  # fmt: skip
    assert created.status_code == 201, created.text
    ae = stack.api.post("/api/v1/ae-titles", json={"aeTitle": ae_title, "pipeline": pipeline})
    assert ae.status_code == 201, ae.text

    # The receiver takes the new AE title within seconds, without a restart.
    deadline = time.monotonic() + 30
    while stack.echo(called=ae_title).returncode != 0:
        assert time.monotonic() < deadline, "the receiver does not accept the new AE title"
        time.sleep(0.5)

    study = _sample(tmp_path / "study", _seed())
    before = stack.job_ids()
    stack.send(tmp_path / "study", called=ae_title)
    job = stack.wait_for_new_job(before, _routed)["jobId"]
    flair = study.series_described("T2 FLAIR AX")
    selected = stack.stored_json(f"jobs/{job}/output/selected-images.json")
    assert list(selected) == ["FLAIR"] and list(selected["FLAIR"]) == [flair]
    _assert_each_instance_once(_wait_for_orthanc(stack, study, flair), study, flair)


def test_the_operator_profile_converts_a_folder(stack: Stack, tmp_path: Path) -> None:
    if stack.target == "compose":
        _compose_operator(stack)
        return
    # Without Docker, operator mode is the same command on the host.
    study = _sample(tmp_path / "in", _seed())
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "seriesflow"), "process", "--input", str(tmp_path / "in"),
         "--output", str(tmp_path / "out"), "--rules",
         str(ROOT / "examples" / "rules" / "clara-t1c.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_operator_outputs(tmp_path / "out", study)


def _assert_operator_outputs(output: Path, study: Study) -> None:
    selected = json.loads((output / "selected-images.json").read_text())
    t1c = study.series_described("T1c SE AX post-contrast")
    assert list(selected) == [T1C_RULES["selections"][0]["name"]]
    (image,) = selected["T1C"].values()
    assert list(selected["T1C"]) == [t1c]
    assert (output / Path(image).name).is_file()
    series_images = json.loads((output / "series-images.json").read_text())
    assert t1c in series_images
    assert (output / "dicom-metadata.json").is_file()


def _compose_operator(stack: Stack) -> None:
    """The README's operator commands: ./sample-input and ./sample-output beside the file."""
    sample_in, sample_out = ROOT / "sample-input", ROOT / "sample-output"
    for folder in (sample_in, sample_out):
        if folder.exists() and any(folder.iterdir()):
            pytest.fail(f"{folder} holds files already: this test writes there; move them away")
    try:
        study = _sample(sample_in, _seed())
        sample_out.mkdir(exist_ok=True)
        result = subprocess.run(
            ["/usr/bin/docker", "compose", "--profile", "operator", "run", "--rm", "operator"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            env={**os.environ, "HOST_UID": str(os.getuid()), "HOST_GID": str(os.getgid())},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        _assert_operator_outputs(sample_out, study)
    finally:
        shutil.rmtree(sample_in, ignore_errors=True)
        shutil.rmtree(sample_out, ignore_errors=True)
