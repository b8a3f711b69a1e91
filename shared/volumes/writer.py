"""Volumes as image files, in DICOM's patient coordinates (LPS), written with numpy.

A volume is one numpy buffer, ``(t, z, y, x[, components])``, allocated once by
:class:`VolumeBuffer` and filled in place by :func:`shared.volumes.pixels.load_stack`; it is
written with one write after a small header. The files are the ones ITK (SimpleITK 2.5,
ITK 5.4) writes for the same image, byte for byte: NIfTI-1 (:mod:`shared.volumes.nifti`,
RAS qform and sform converted from LPS as ITK converts them) and MetaImage
(:mod:`shared.volumes.metaimage`, LPS as it is). ``tests/unit/test_writer.py`` checks this
against SimpleITK; SimpleITK is not imported to write.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.errors import InvalidInputError, OutputError
from shared.volumes.geometry import Geometry
from shared.volumes.metaimage import metaimage_header
from shared.volumes.nifti import VOX_OFFSET, nifti_header, nifti_voxels, write_nifti

ImageFormat = Literal["mhd", "nii", "nii.gz"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("mhd", "nii", "nii.gz")
Array = np.ndarray[Any, np.dtype[Any]]

PIXEL_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
"""The component types a volume may have (those ITK, NIfTI and MetaImage share)."""


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


def zeroed(shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
    """A zero-filled array in its own anonymous memory mapping, its pages mapped up front.

    Not ``np.zeros``: numpy asks the kernel for transparent huge pages for large arrays,
    and where memory is fragmented (a page cache full of the images just written) the
    kernel compacts memory to find them, which cost up to 0.7 s of system time for a
    150 MiB volume here; ordinary pages, mapped in one go, cost about 0.07 s."""
    size = int(np.prod(shape)) * dtype.itemsize
    if size == 0:
        return np.zeros(shape, dtype=dtype)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    memory = mmap.mmap(-1, size, flags=flags)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)


class VolumeBuffer:
    """Allocates a volume's one buffer; use it as the allocator of
    :func:`shared.volumes.pixels.load_stack`. Afterwards :attr:`voxels` holds the volume,
    and :meth:`write` writes it to ``path``.

    For an uncompressed scalar NIfTI file or a MetaImage (whose voxels are stored as they
    lie in memory) the buffer is the image file itself, under its temporary name, mapped
    into memory: the voxels are loaded straight into the file, and writing only adds the
    header and renames it. That saves filling a buffer and copying it into the file (about
    0.12 s of CPU time for a 150 MiB volume here). Frames read straight from their DICOM
    file are written into it with ``pwrite`` (:meth:`put_frame`, used by
    :func:`shared.volumes.pixels.load_stack`) rather than through the mapping, whose page
    faults cost several times as much; the mapping then reads them from the page cache.
    Otherwise the buffer is anonymous memory (:func:`zeroed`) written by
    :func:`write_image`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.voxels: Array | None = None
        self._mapping: mmap.mmap | None = None
        self._fd: int | None = None  # the mapped file, open for put_frame
        self._offset = 0  # of the voxels in it

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
        """``shape`` is ``(t, z, y, x[, c])``; the buffer is zero-initialised."""
        if dtype.name not in PIXEL_TYPES:
            raise ValueError(f"no image pixel type for {dtype.name}")
        if len(shape) not in (4, 5):
            raise ValueError(f"a volume buffer is (t, z, y, x[, c]), not {shape}")
        self.discard()
        nbytes = int(np.prod(shape)) * dtype.itemsize
        name = self.path.name
        mapped = nbytes > 0 and (
            name.endswith(".mhd") or (name.endswith(".nii") and len(shape) == 4)
        )
        if not mapped:
            self.voxels = zeroed(shape, dtype)
            return self.voxels
        offset = 0 if name.endswith(".mhd") else VOX_OFFSET
        data_file = _temporary_names(self.path)[1 if name.endswith(".mhd") else 0]
        try:
            fd = os.open(data_file, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.ftruncate(fd, offset + nbytes)
                self._mapping = mmap.mmap(fd, offset + nbytes, mmap.MAP_SHARED)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            data_file.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._fd, self._offset = fd, offset
        count = nbytes // dtype.itemsize
        voxels = np.frombuffer(self._mapping, dtype=dtype, count=count, offset=offset)
        self.voxels = voxels.reshape(shape)
        return self.voxels

    def put_frame(self, index: tuple[int, int], values: Array) -> bool:
        """Write frame ``index`` (t, z) of the mapped file from ``values`` (rows x columns
        of the volume's type) with ``pwrite``; False when the buffer is not a mapped file
        (the caller then writes into :attr:`voxels`)."""
        voxels = self.voxels
        if self._fd is None or voxels is None or values.dtype != voxels.dtype:
            return False
        frame_bytes = voxels[0, 0].nbytes
        if values.nbytes != frame_bytes:
            return False
        at = self._offset + (index[0] * voxels.shape[1] + index[1]) * frame_bytes
        view = np.ascontiguousarray(values).data.cast("B")
        try:
            while view:
                written = os.pwrite(self._fd, view, at)
                view, at = view[written:], at + written
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return True

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(
        self,
        origin: Sequence[float],
        spacing: Sequence[float],
        direction: Sequence[float],
        time_spacing: float = 1.0,
    ) -> None:
        """Write the volume to :attr:`path` (see :func:`write_image`)."""
        if self.voxels is None:
            raise ValueError("nothing was allocated")
        if self._mapping is None:
            write_image(self.path, self.voxels, origin, spacing, direction, time_spacing)
            return
        self._close_file()
        _write(self.path, self.voxels, origin, spacing, direction, time_spacing, self._mapping)

    def discard(self) -> None:
        """Remove what a mapped buffer left on disk (a volume that will not be written)."""
        self._close_file()
        if self._mapping is not None:
            for leftover in _temporary_names(self.path):
                leftover.unlink(missing_ok=True)
            self._mapping = None


def _temporary_names(path: Path) -> tuple[Path, Path]:
    """Where an image is written before it is complete: the file (a MetaImage's header),
    and a MetaImage's voxels."""
    return path.with_name(path.name + ".partial"), path.with_name(path.name + ".partial.raw")


def write_image(
    path: Path,
    voxels: Array,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[float],
    time_spacing: float = 1.0,
) -> None:
    """Write ``voxels`` ``(t, z, y, x[, c])`` with its LPS geometry (``direction`` row-major
    3x3; ``time_spacing`` the 4th axis' of a volume of several timepoints). The format
    follows the name (``.mhd``, ``.nii``, ``.nii.gz``); the file appears under ``path`` only
    once it is complete."""
    _write(path, voxels, origin, spacing, direction, time_spacing, None)


def _write(
    path: Path,
    voxels: Array,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[float],
    time_spacing: float,
    mapping: mmap.mmap | None,
) -> None:
    """Write an image; with ``mapping``, its voxels are already in the temporary file
    (a :class:`VolumeBuffer`'s), which only needs its header."""
    timepoints, slices, rows, columns = voxels.shape[:4]
    components = voxels.shape[4] if voxels.ndim == 5 else 1
    size = (columns, rows, slices) if timepoints == 1 else (columns, rows, slices, timepoints)
    geometry = Geometry.of(origin, spacing, direction, time_spacing, four_d=timepoints > 1)
    name = path.name
    tmp, raw_tmp = _temporary_names(path)
    try:
        if name.endswith(".mhd"):
            raw = path.with_suffix(".raw")
            header = metaimage_header(size, voxels.dtype, components, geometry, raw.name)
            if mapping is None:
                with raw_tmp.open("wb") as fp:
                    fp.write(np.ascontiguousarray(voxels).data.cast("B"))
            tmp.write_text(header, encoding="ascii")
            raw_tmp.replace(raw)
        elif name.endswith((".nii", ".nii.gz")):
            header_bytes = nifti_header(size, voxels.dtype, components, geometry)
            if mapping is None:
                with tmp.open("wb") as fp:
                    write_nifti(fp, header_bytes, nifti_voxels(voxels), name.endswith(".gz"))
            else:
                mapping[: len(header_bytes)] = header_bytes
        else:
            raise OutputError(f"cannot write {path}: not a .mhd, .nii or .nii.gz name")
        tmp.replace(path)
    except OSError as exc:
        for leftover in (tmp, raw_tmp):
            leftover.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
