"""Volumes as ITK images, written in DICOM's patient coordinates (LPS).

ITK stores LPS geometry as it is in MetaImage and converts it to NIfTI's RAS itself, with
the direction cosines in the qform and sform, so no header is written by hand here.

Voxels are decoded straight into the ITK image's own buffer (:class:`VolumeBuffer`), so a
volume is held in memory once, not once by numpy and again by ITK.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from shared.errors import InvalidInputError, OutputError

ImageFormat = Literal["mhd", "nii", "nii.gz"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("mhd", "nii", "nii.gz")


def parse_image_format(value: object, what: str = "image format") -> ImageFormat:
    """The one reading of an image format (``--format``, ``NVIDIA_CLARA_IMAGE_FORMAT``, a
    pipeline's ``image-format``): case and a leading dot ignored, empty or absent means
    ``mhd``; anything else is an :class:`InvalidInputError` naming ``what``."""
    if value is None:
        return "mhd"
    cleaned = str(value).strip().lower().lstrip(".")
    if cleaned == "":
        return "mhd"
    for known in IMAGE_FORMATS:
        if cleaned == known:
            return known
    raise InvalidInputError(f"{what} must be one of {', '.join(IMAGE_FORMATS)}, not {value!r}")


_SCALAR_TYPES = {
    "uint8": sitk.sitkUInt8,
    "int8": sitk.sitkInt8,
    "uint16": sitk.sitkUInt16,
    "int16": sitk.sitkInt16,
    "uint32": sitk.sitkUInt32,
    "int32": sitk.sitkInt32,
    "float32": sitk.sitkFloat32,
    "float64": sitk.sitkFloat64,
}
_VECTOR_TYPES = {
    "uint8": sitk.sitkVectorUInt8,
    "int8": sitk.sitkVectorInt8,
    "uint16": sitk.sitkVectorUInt16,
    "int16": sitk.sitkVectorInt16,
    "uint32": sitk.sitkVectorUInt32,
    "int32": sitk.sitkVectorInt32,
    "float32": sitk.sitkVectorFloat32,
}


class VolumeBuffer:
    """Allocates ITK images and lends their pixel buffers to numpy for writing.

    Use it as the allocator of :func:`shared.volumes.pixels.load_stack`; afterwards
    :attr:`image` holds the voxels. The array handed out must not outlive the image.
    """

    def __init__(self) -> None:
        self.image: sitk.Image | None = None

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        """``shape`` is ``(t, z, y, x[, c])``; a single timepoint gives a 3-D image."""
        vector = len(shape) == 5
        spatial = shape[:4]
        dims = spatial[1:] if spatial[0] == 1 else spatial
        size = [int(v) for v in reversed(dims)]  # ITK orders x, y, z[, t]
        table = _VECTOR_TYPES if vector else _SCALAR_TYPES
        if dtype.name not in table:
            raise ValueError(f"no ITK pixel type for {dtype.name}")
        if vector:
            image = sitk.Image(size, table[dtype.name], int(shape[4]))
        else:
            image = sitk.Image(size, table[dtype.name])
        view = sitk.GetArrayViewFromImage(image)  # read-only view of the image's buffer
        address = view.__array_interface__["data"][0]
        raw = (ctypes.c_char * view.nbytes).from_address(address)
        writable: np.ndarray[Any, Any] = np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape)
        self.image = image
        return writable


def set_geometry(
    image: sitk.Image,
    origin: tuple[float, float, float],
    spacing: tuple[float, float, float],
    direction: tuple[float, ...],
    time_spacing: float = 1.0,
) -> None:
    """Set origin, spacing and direction; a 4-D image gets ``time_spacing`` on its 4th axis."""
    if image.GetDimension() == 3:
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return
    image.SetOrigin((*origin, 0.0))
    image.SetSpacing((*spacing, time_spacing))
    d = direction
    image.SetDirection(
        (d[0], d[1], d[2], 0.0, d[3], d[4], d[5], 0.0, d[6], d[7], d[8], 0.0, 0, 0, 0, 1.0)
    )


def write_image(image: sitk.Image, path: Path) -> None:
    """Write an image; it appears under ``path`` only once it is complete."""
    tmp = path.with_name(path.name + ".partial" + _suffix(path))
    try:
        sitk.WriteImage(image, str(tmp), useCompression=path.name.endswith(".gz"))
        _commit(tmp, path)
    except (RuntimeError, OSError) as exc:
        for leftover in (tmp, tmp.with_suffix(".raw")):
            leftover.unlink(missing_ok=True)
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise OutputError(f"cannot write {path}: {detail}") from exc


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
