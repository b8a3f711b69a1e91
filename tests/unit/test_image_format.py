"""One reading of an image format for the CLI, operator settings and pipeline definitions."""

from __future__ import annotations

import pytest

from shared.errors import InvalidInputError
from shared.operator.settings import OperatorSettings
from shared.pipelines import parse_pipeline
from shared.volumes.writer import parse_image_format


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, "mhd"), ("", "mhd"), (" NII.GZ ", "nii.gz"), (".nii", "nii"), ("MHD", "mhd")],
)
def test_formats_are_read_one_way(given: str | None, expected: str) -> None:
    assert parse_image_format(given) == expected


def test_an_unknown_format_names_where_it_came_from() -> None:
    with pytest.raises(InvalidInputError, match=r"image-format must be one of mhd, nii, nii\.gz"):
        parse_image_format("png", "image-format")


def test_pipelines_and_operator_settings_use_it() -> None:
    assert parse_pipeline({"name": "p", "image-format": ".NII.GZ"}, "p").image_format == "nii.gz"
    clara = {
        "api-version": "0.4.0",
        "name": "c",
        "operators": [
            {
                "name": "dicom-parser",
                "container": {"image": "clara/dicom-parser", "tag": "latest"},
                "variables": {"NVIDIA_CLARA_IMAGE_FORMAT": "NII"},
            }
        ],
    }
    assert parse_pipeline(clara, "c").image_format == "nii"
    with pytest.raises(InvalidInputError, match="image-format"):
        parse_pipeline({"name": "p", "image-format": "png"}, "p")
    settings = OperatorSettings.model_validate({"NVIDIA_CLARA_IMAGE_FORMAT": " .Nii "})
    assert settings.image_format == "nii"
