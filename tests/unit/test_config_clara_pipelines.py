"""Clara pipeline definitions: strict keys, pipeline ids, Clara's default rules path."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import parse_config
from shared.errors import InvalidInputError
from shared.pipelines import (
    PipelineRegistry,
    derived_pipeline_id,
    parse_pipeline,
    with_pipeline_id,
)
from shared.selection import CLARA_RULES_FILE, DEFAULT_RULES_FILE, resolve_rules

CLARA_ID = "0fcdcdea89c6456fb20abc7379c54ef2"
T1C_RULES = {"selections": [{"name": "T1C", "conditions": {"Modality": "MR"}}]}


def clara_definition(variables: dict[str, str] | None = None) -> dict[str, Any]:
    selector: dict[str, Any] = {
        "name": "series-selection",
        "description": "Selects the image file(s)",
        "container": {"image": "clara/series-selector", "tag": "latest"},
        "input": [{"from": "dicom-parser", "path": "/input"}],
        "output": [{"path": "/output", "name": "selections"}],
    }
    if variables:
        selector["variables"] = variables
    return {
        "api-version": "0.4.0",
        "name": "series-selection-pipeline",
        "operators": [
            {
                "name": "dicom-parser",
                "description": "Converts DICOM instances into image files",
                "container": {"image": "clara/dicom-parser", "tag": "latest"},
                "input": [{"path": "/input"}],
                "output": [{"path": "/output"}],
            },
            selector,
        ],
    }


def test_clara_definition_without_rules_reads_clara_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_pipeline(clara_definition(), "def").rules.is_empty
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "selection-rules.json").write_text(json.dumps(T1C_RULES))
    assert parse_pipeline(clara_definition(), "def").rules.names == ["T1C"]


def test_rules_precedence_keeps_clara_default_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "selection-rules.json").write_text(json.dumps(T1C_RULES))
    env_file = tmp_path / "env.json"
    env_file.write_text('{"selections": [{"name": "env", "conditions": {}}]}')
    cli = tmp_path / "cli.json"
    cli.write_text('{"selections": [{"name": "cli", "conditions": {}}]}')
    b64 = base64.b64encode(b'{"selections": [{"name": "b64", "conditions": {}}]}').decode()
    assert resolve_rules(cli, b64, str(env_file)).parse().names == ["cli"]
    assert resolve_rules(None, b64, str(env_file)).parse().names == ["b64"]
    assert resolve_rules(None, None, str(env_file)).parse().names == ["env"]
    source = resolve_rules(None, None, None)
    assert source.parse().names == ["T1C"]
    assert source.name == str(CLARA_RULES_FILE)
    (tmp_path / "config" / "selection-rules.json").unlink()
    assert resolve_rules(None, None, None).name == str(DEFAULT_RULES_FILE)


def test_clara_variables_win_over_the_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "selection-rules.json").write_text(json.dumps(T1C_RULES))
    b64 = base64.b64encode(b'{"selections": [{"name": "b64", "conditions": {}}]}').decode()
    pipeline = parse_pipeline(clara_definition({"NVIDIA_CLARA_SELECTION_RULES_BASE64": b64}), "def")
    assert pipeline.rules.names == ["b64"]
    with pytest.raises(InvalidInputError, match="NVIDIA_CLARA_SELECTION_RULES_BASE64 is not"):
        parse_pipeline(clara_definition({"NVIDIA_CLARA_SELECTION_RULES_BASE64": "%%"}), "def")


def test_unknown_keys_in_a_clara_definition_are_named() -> None:
    data = clara_definition({"NVIDIA_CLARA_SELECTON_RULES_FILE": "rules.json"})
    data["operators"][0]["variabels"] = {}
    data["operators"][1]["container"]["imag"] = "x"
    data["api_version"] = "0.4.0"
    with pytest.raises(InvalidInputError) as caught:
        parse_pipeline(data, "def.yaml")
    assert caught.value.reason == (
        "def.yaml: api_version: unknown key; did you mean api-version?; "
        "operators[0].variabels: unknown key; did you mean variables?; "
        "operators[1].container.imag: unknown key; did you mean image?; "
        "operators[1].variables.NVIDIA_CLARA_SELECTON_RULES_FILE: unknown key; "
        "did you mean NVIDIA_CLARA_SELECTION_RULES_FILE?"
    )


def test_unknown_keys_in_a_seriesflow_definition_are_named() -> None:
    data = {"name": "p", "image_format": "nii", "routes": [{"selection": "a", "destination": []}]}
    with pytest.raises(InvalidInputError) as caught:
        parse_pipeline(data, "p.yaml")
    assert caught.value.reason == (
        "p.yaml: image_format: unknown key; did you mean image-format?; "
        "routes[0].destination: unknown key; did you mean destinations?"
    )


def write(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(yaml.safe_dump(data))


def test_pipeline_ids_file_resolves_a_clara_mapping(tmp_path: Path) -> None:
    write(tmp_path, "series-selection.yaml", clara_definition())
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {CLARA_ID: "series-selection-pipeline"}})
    registry = PipelineRegistry.load(tmp_path)
    config = parse_config(
        {
            "dicom": {"scp": {"ae-titles": [{"ae-title": "NVIDIADGX100"}]}},
            "pipeline-mappings": [
                {"name": "ct", "clara-ae-title": "NVIDIADGX100", "pipeline-id": CLARA_ID}
            ],
        }
    )
    key = config.pipeline_for("NVIDIADGX100")
    assert key == CLARA_ID
    found = registry.get(key)
    assert found is not None and found.name == "series-selection-pipeline"
    assert [p.name for p in registry.all()] == ["series-selection-pipeline"]


def test_pipeline_ids_naming_no_pipeline_or_malformed_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "series-selection.yaml", clara_definition())
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {CLARA_ID: "nope"}})
    with pytest.raises(InvalidInputError, match=f"{CLARA_ID}: no pipeline named 'nope'"):
        PipelineRegistry.load(tmp_path)
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {CLARA_ID: "x"}, "other": 1})
    with pytest.raises(InvalidInputError, match="holds only 'pipeline-ids"):
        PipelineRegistry.load(tmp_path)
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {"../x": "series-selection-pipeline"}})
    with pytest.raises(InvalidInputError, match="pipeline id"):
        PipelineRegistry.load(tmp_path)


def test_an_id_used_by_two_pipelines_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", {"name": "a", "id": CLARA_ID})
    write(tmp_path, "b.yaml", {"name": "b"})
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {CLARA_ID: "b"}})
    with pytest.raises(InvalidInputError, match="defined twice"):
        PipelineRegistry.load(tmp_path)
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {"1234": "a"}})
    with pytest.raises(InvalidInputError, match=f"pipeline 'a' already has id {CLARA_ID}"):
        PipelineRegistry.load(tmp_path)
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {"1234": "b"}})
    write(tmp_path, "c.yaml", {"name": "b", "image-format": "nii"})
    with pytest.raises(InvalidInputError, match="pipeline 'b' is defined twice"):
        PipelineRegistry.load(tmp_path)


def test_a_mapped_id_becomes_the_pipeline_id(tmp_path: Path) -> None:
    write(tmp_path, "series-selection.yaml", clara_definition())
    write(tmp_path, "pipeline-ids.yaml", {"pipeline-ids": {CLARA_ID: "series-selection-pipeline"}})
    registry = PipelineRegistry.load(tmp_path)
    by_id, by_name = registry.get(CLARA_ID), registry.get("series-selection-pipeline")
    assert by_id is by_name and by_id is not None and by_id.id == CLARA_ID


def test_registration_gives_a_stable_clara_style_id() -> None:
    spec = with_pipeline_id(clara_definition())
    assert spec["id"] == derived_pipeline_id("series-selection-pipeline")
    assert len(spec["id"]) == 32 and int(spec["id"], 16) >= 0
    assert with_pipeline_id(clara_definition())["id"] == spec["id"]
    assert with_pipeline_id({**clara_definition(), "id": CLARA_ID})["id"] == CLARA_ID
    assert with_pipeline_id(clara_definition(), keep=CLARA_ID)["id"] == CLARA_ID
    assert parse_pipeline(spec, "stored").id == spec["id"]
