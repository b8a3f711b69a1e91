"""``seriesflow process --scaling``: display values by default, Philips precise values on
request, the factors recorded per volume; the same setting from SERIESFLOW_SCALING."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from seriesflow.cli import app
from shared.samples import write_ct_series

RS, RI, SS = 2.0, 10.0, 0.25


@pytest.fixture(scope="module")
def philips_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small series turned into Philips-style images with a private scale slope."""
    root = tmp_path_factory.mktemp("philips")
    for path in write_ct_series(root, slices=4, size=16):
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "Philips Medical Systems"
        ds.RescaleSlope = RS
        ds.RescaleIntercept = RI
        ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 005")
        ds.add_new((0x2005, 0x100E), "FL", SS)
        ds.save_as(path)
    return root


def _process(src: Path, out: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    result = CliRunner().invoke(
        app, ["process", "--input", str(src), "--output", str(out), "-q", "-f", "nii", *extra]
    )
    metadata = (
        json.loads((out / "dicom-metadata.json").read_text()) if result.exit_code == 0 else {}
    )
    return result.exit_code, result.output, metadata


def _volume(out: Path, metadata: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray[Any, Any]]:
    (volume,) = metadata["studies"][0]["series"][0]["volumes"]
    return volume, sitk.GetArrayFromImage(sitk.ReadImage(str(out / volume["image"])))


def test_display_is_the_default_and_precise_divides_by_rs_ss(
    philips_series: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERIESFLOW_SCALING", raising=False)
    code, output, shown = _process(philips_series, tmp_path / "display")
    assert code == 0, output
    volume, display = _volume(tmp_path / "display", shown)
    assert volume["scaling"] == {
        "values": "display",
        "source": "RescaleSlope",
        "factors": [[RS, RI]],
        "philipsScaleSlopes": [SS],
    }
    code, output, exact = _process(philips_series, tmp_path / "precise", "--scaling", "precise")
    assert code == 0, output
    volume, precise = _volume(tmp_path / "precise", exact)
    assert volume["scaling"]["values"] == "precise"
    assert volume["scaling"]["factors"] == [[1 / SS, RI / (RS * SS)]]
    np.testing.assert_allclose(precise, display / (RS * SS), rtol=1e-6)


def test_environment_sets_the_scaling(
    philips_series: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERIESFLOW_SCALING", "precise")
    code, output, metadata = _process(philips_series, tmp_path)
    assert code == 0, output
    volume, _ = _volume(tmp_path, metadata)
    assert volume["scaling"]["values"] == "precise"


def test_unknown_scaling_is_refused(philips_series: Path, tmp_path: Path) -> None:
    code, output, _ = _process(philips_series, tmp_path, "--scaling", "exact")
    assert code == 2
    assert "--scaling must be one of display, precise" in output
