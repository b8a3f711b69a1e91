# mypy: disallow-untyped-calls=False
"""VolumeBuffer lends ITK's own pixel buffer to numpy; writes must land in the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from shared.errors import OutputError
from shared.volumes.writer import VolumeBuffer, set_geometry, write_image


@pytest.mark.parametrize(
    ("shape", "dtype", "size", "components"),
    [
        ((1, 3, 4, 5), np.int16, (5, 4, 3), 1),
        ((2, 3, 4, 5), np.float32, (5, 4, 3, 2), 1),
        ((1, 3, 4, 5, 3), np.uint8, (5, 4, 3), 3),
    ],
)
def test_writes_through_the_view_reach_the_image(
    shape: tuple[int, ...], dtype: type, size: tuple[int, ...], components: int
) -> None:
    buffer = VolumeBuffer()
    view = buffer(shape, np.dtype(dtype))
    values: np.ndarray[Any, Any] = np.arange(view.size).reshape(shape).astype(dtype)
    view[...] = values
    assert buffer.image is not None
    assert buffer.image.GetSize() == size
    assert buffer.image.GetNumberOfComponentsPerPixel() == components
    expected = values[0] if shape[0] == 1 else values
    assert np.array_equal(sitk.GetArrayFromImage(buffer.image), expected)


@pytest.mark.parametrize("fmt", ["mhd", "nii", "nii.gz"])
def test_written_file_has_the_geometry(tmp_path: Path, fmt: str) -> None:
    buffer = VolumeBuffer()
    view = buffer((1, 2, 3, 4), np.dtype(np.int16))
    view[...] = 7
    assert buffer.image is not None
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    set_geometry(buffer.image, (1.0, 2.0, 3.0), (0.5, 0.6, 2.0), direction)
    path = tmp_path / f"v.{fmt}"
    write_image(buffer.image, path)
    back = sitk.ReadImage(str(path))
    assert back.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))
    assert back.GetSpacing() == pytest.approx((0.5, 0.6, 2.0))
    assert back.GetDirection() == pytest.approx(direction)
    assert not list(tmp_path.glob("*partial*"))


def test_a_failed_write_is_an_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    buffer = VolumeBuffer()
    buffer((1, 2, 3, 4), np.dtype(np.int16))
    assert buffer.image is not None
    with pytest.raises(OutputError, match="cannot write"):
        write_image(buffer.image, tmp_path / "missing-folder" / "v.nii")
    assert list(tmp_path.iterdir()) == []
