"""The configuration file: unknown keys named by path, Clara's unused keys reported,
``read-*-from-crd`` with Clara's meaning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from shared.config import check_config, load_config, parse_config
from shared.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]

CLARA_SAMPLE = """
dicom:
  scp:
    port: 104
    ae-titles:
      - ae-title: NVIDIADGX100
      - ae-title: NVIDIADGX101
    max-associations: 2
    sources:
      - host-ip: 1.2.3.4
        ae-title: DCM4CHEE
  scu:
    ae-title: ClaraSCU
    max-associations: 2
    destinations:
      - name: MyOrthanc
        host-ip: 1.2.3.5
        port: 104
        ae-title: ORTHANC
pipeline-mappings:
  - name: ct_ai_pipeline
    clara-ae-title: NVIDIADGX100
    pipeline-id: 0fcdcdea89c6456fb20abc7379c54ef2
"""


def test_clara_sample_loads_without_errors_or_notices() -> None:
    data = yaml.safe_load(CLARA_SAMPLE)
    assert check_config(data).errors == []
    assert check_config(data).notices == []
    config = parse_config(data)
    assert config.pipeline_for("NVIDIADGX100") == "0fcdcdea89c6456fb20abc7379c54ef2"


def test_misspelt_key_stops_loading_with_its_path_and_the_meant_key() -> None:
    data = yaml.safe_load(CLARA_SAMPLE)
    data["dicom"]["scp"]["reject-unknown-source"] = False
    with pytest.raises(InvalidInputError) as caught:
        parse_config(data, "app.yaml")
    assert caught.value.reason == (
        "app.yaml: dicom.scp.reject-unknown-source: unknown key; "
        "did you mean reject-unknown-sources?"
    )


def test_every_unknown_key_is_named_in_lists_too() -> None:
    data = yaml.safe_load(CLARA_SAMPLE)
    data["dicom"]["scp"]["ae-titles"][1]["timout"] = 5
    data["dicom"]["scu"]["destinations"][0]["aetitle"] = "X"
    data["pipeline-mappings"][0]["pipline"] = "x"
    data["storage"] = {"temporary": "./storage", "tmp": 1}
    data["colour"] = "blue"
    errors = check_config(data).errors
    assert sorted(errors) == [
        "colour: unknown key",
        "dicom.scp.ae-titles[1].timout: unknown key; did you mean timeout?",
        "dicom.scu.destinations[0].aetitle: unknown key; did you mean ae-title?",
        "pipeline-mappings[0].pipline: unknown key; did you mean pipeline-id?",
        "storage.tmp: unknown key",
    ]
    with pytest.raises(InvalidInputError, match="colour: unknown key"):
        parse_config(data)


def test_clara_keys_seriesflow_does_not_use_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    data = yaml.safe_load(CLARA_SAMPLE)
    data["dicom"]["scp"]["log-dimse-datasets"] = False
    data["dicom"]["scp"]["ae-titles"][0]["processors"] = [
        "Nvidia.Clara.Dicom.Processors.JobProcessor,Nvidia.Clara.DicomAdapter"
    ]
    data["dicom"]["scu"]["log-data-pdus"] = False
    data["storage"] = {"temporary": "./storage"}
    data["services"] = {"platform-endpoint": "localhost:50051"}
    with caplog.at_level(logging.INFO):
        parse_config(data, "app.yaml")
    notices = {
        r.getMessage().removeprefix("configuration: ").split(":")[0]: r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    }
    assert sorted(notices) == [
        "dicom.scp.ae-titles[0].processors",
        "dicom.scp.log-dimse-datasets",
        "dicom.scu.log-data-pdus",
        "services.platform-endpoint",
        "storage.temporary",
    ]
    assert all("not used" in n for n in notices.values())
    assert "SERIESFLOW_S3" in notices["storage.temporary"]


def test_read_from_crd_true_sets_the_file_list_aside() -> None:
    data = yaml.safe_load(CLARA_SAMPLE)
    data["dicom"]["scp"]["read-aetitles-from-crd"] = True
    data["dicom"]["scp"]["read-sources-from-crd"] = False
    data["dicom"]["scu"]["read-destinations-from-crd"] = True
    config = parse_config(data)
    assert config.dicom.scp.ae_titles == ()
    assert [s.ae_title for s in config.dicom.scp.sources] == ["DCM4CHEE"]
    assert config.dicom.scu.destinations == ()
    assert config.origin("ae-titles") == "store"
    assert config.origin("sources") == "file"
    assert config.origin("destinations") == "store"
    notices = check_config(data).notices
    assert any(n.startswith("dicom.scp.ae-titles: not used") for n in notices)
    assert any(n.startswith("dicom.scu.destinations: not used") for n in notices)


def test_read_from_crd_absent_uses_both() -> None:
    config = parse_config(yaml.safe_load(CLARA_SAMPLE))
    assert {config.origin(k) for k in ("ae-titles", "sources", "destinations")} == {"both"}
    assert [a.ae_title for a in config.dicom.scp.ae_titles] == ["NVIDIADGX100", "NVIDIADGX101"]


def test_read_from_crd_must_be_a_boolean() -> None:
    with pytest.raises(InvalidInputError, match="read-aetitles-from-crd"):
        parse_config({"dicom": {"scp": {"read-aetitles-from-crd": "sometimes"}}})


def test_example_and_deploy_files_have_no_unknown_keys() -> None:
    for path in [
        REPO / "deploy" / "compose" / "config.yaml",
        REPO / "deploy" / "services" / "config" / "config.yaml",
        *sorted((REPO / "examples").glob("**/dicom-adapter*.yaml")),
    ]:
        assert check_config(yaml.safe_load(path.read_text())).errors == [], path
        load_config(path)
