"""Writing volumes with SimpleITK, in DICOM's patient coordinates (LPS).

ITK stores LPS geometry as it is in MetaImage and converts it to NIfTI's RAS itself, with
the direction cosines in the qform and sform, so no header is written by hand here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

ImageFormat = Literal["mhd", "nii", "nii.gz"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("mhd", "nii", "nii.gz")


def make_image(
    voxels: np.ndarray[Any, np.dtype[Any]],
    origin: tuple[float, float, float],
    spacing: tuple[float, float, float],
    direction: tuple[float, ...],
    time_spacing: float = 1.0,
) -> sitk.Image:
    """An ITK image of ``voxels`` shaped ``(t, z, y, x[, c])`` with the given geometry.

    A single timepoint gives a 3-D image; several give a 4-D image whose fourth axis has
    ``time_spacing``. A trailing sample axis gives a vector (RGB) image. The voxels are
    copied, so the caller can free its array before writing.
    """
    is_vector = voxels.ndim == 5
    timepoints = voxels.shape[0]
    if timepoints == 1:
        image = sitk.GetImageFromArray(voxels[0], isVector=is_vector)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
    else:
        image = sitk.GetImageFromArray(voxels, isVector=is_vector)
        image.SetOrigin((*origin, 0.0))
        image.SetSpacing((*spacing, time_spacing))
        d = direction
        image.SetDirection(
            (d[0], d[1], d[2], 0.0, d[3], d[4], d[5], 0.0, d[6], d[7], d[8], 0.0, 0, 0, 0, 1.0)
        )
    return image


def write_image(image: sitk.Image, path: Path) -> None:
    """Write an image; it appears under ``path`` only once it is complete."""
    tmp = path.with_name(path.name + ".partial" + _suffix(path))
    sitk.WriteImage(image, str(tmp), useCompression=path.name.endswith(".gz"))
    _commit(tmp, path)


def _suffix(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".mhd"):
        if name.endswith(ext):
            return ext
    return path.suffix


def _commit(tmp: Path, path: Path) -> None:
    """Move a fully written image into place (MetaImage: header and data file)."""
    if path.name.endswith(".mhd"):
        raw_tmp = tmp.with_suffix(".raw")
        raw = path.with_suffix(".raw")
        raw_tmp.replace(raw)
        text = tmp.read_text(encoding="ascii").replace(
            f"ElementDataFile = {raw_tmp.name}", f"ElementDataFile = {raw.name}"
        )
        path.write_text(text, encoding="ascii")
        tmp.unlink()
    else:
        tmp.replace(path)
