"""Pixel loading: frames into one array, with rescaling and a sensible pixel type.

Uncompressed little- and big-endian pixel data is read straight from the file at its
offset, one slice at a time, into a preallocated array, so a volume costs its own size in
memory and no more. Compressed data (RLE, JPEG, JPEG-LS, JPEG 2000) goes through pydicom's
decoders, one file at a time.

Rescale slope and intercept are applied. The output keeps an integer type whenever every
slope and intercept is integral, choosing the smallest type that holds the rescaled range;
otherwise it is float32. MONOCHROME1 images are inverted so that higher means brighter,
as in MONOCHROME2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array  # type: ignore[attr-defined]
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.dicom.files import InstanceFile
from shared.errors import InvalidInputError
from shared.volumes.frames import Frame

Array = np.ndarray[Any, np.dtype[Any]]
_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_INT_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)


def stored_dtype(ds: Dataset) -> np.dtype[Any]:
    bits = int(ds.get("BitsAllocated", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits == 1:
        raise InvalidInputError("1-bit pixel data (a segmentation or overlay) is not a volume")
    if bits not in (8, 16, 32):
        raise InvalidInputError(f"BitsAllocated {bits} is not supported")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


def load_stack(
    files: Sequence[InstanceFile], frames: Sequence[Sequence[Frame]]
) -> tuple[Array, list[str]]:
    """Pixels of ``frames[t][z]`` as an array ``(t, z, rows, columns[, samples])``.

    Returns the array, rescaled, and notes on what was done to it.
    """
    first = files[frames[0][0].instance].dataset
    samples = int(first.get("SamplesPerPixel", 1))
    rows, cols = frames[0][0].rows, frames[0][0].columns
    shape: tuple[int, ...] = (len(frames), len(frames[0]), rows, cols)
    if samples > 1:
        shape = (*shape, samples)
    dtype = np.dtype(np.uint8) if samples > 1 else stored_dtype(first)
    volume = np.empty(shape, dtype=dtype)
    by_instance: dict[int, list[tuple[int, int, Frame]]] = {}
    for t, row in enumerate(frames):
        for z, frame in enumerate(row):
            by_instance.setdefault(frame.instance, []).append((t, z, frame))
    notes: list[str] = []
    for instance, targets in by_instance.items():
        item = files[instance]
        _load_instance(item, targets, volume, notes)
    flat = [f for row in frames for f in row]
    if samples == 1:
        if str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            _invert(volume, first)
            notes.append("MONOCHROME1 inverted to MONOCHROME2")
        volume = _rescale(volume, flat, notes)
    return volume, notes


def _load_instance(
    item: InstanceFile, targets: list[tuple[int, int, Frame]], volume: Array, notes: list[str]
) -> None:
    ds = item.dataset
    syntax = ds.file_meta.TransferSyntaxUID
    single = len(targets) == 1 and targets[0][2].tile is None
    try:
        if syntax in _NATIVE and int(ds.get("SamplesPerPixel", 1)) == 1 and single:
            pixels = _read_native_frame(item, targets[0][2].frame)
        else:
            pixels = pixel_array(str(item.path), raw=False)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"pixel data of {item.relative_path} cannot be decoded: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if syntax == DeflatedExplicitVRLittleEndian and "deflated" not in notes:
        notes.append("deflated")
    for t, z, frame in targets:
        if single and pixels.ndim == volume.ndim - 2:
            image = pixels
        else:
            image = pixels[frame.frame] if _has_frame_axis(ds, pixels) else pixels
        if frame.tile is not None:
            tiles = image.shape[0] // frame.rows
            r, c = divmod(frame.tile, tiles)
            image = image[
                r * frame.rows : (r + 1) * frame.rows, c * frame.columns : (c + 1) * frame.columns
            ]
        if image.shape != volume.shape[2:]:
            raise InvalidInputError(
                f"{item.relative_path}: frame of shape {image.shape} where "
                f"{volume.shape[2:]} was expected"
            )
        volume[t, z] = image


def _has_frame_axis(ds: Dataset, pixels: Array) -> bool:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    return frames > 1 and pixels.ndim == (4 if samples > 1 else 3)


def _read_native_frame(item: InstanceFile, frame: int) -> Array:
    """One frame of uncompressed, single-sample pixel data, read at its file offset."""
    ds = item.dataset
    dtype = stored_dtype(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    count = rows * cols
    size = count * dtype.itemsize
    if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
        index = frame if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
        return pixel_array(str(item.path), index=index)
    if elem.length < (frame + 1) * size:
        raise InvalidInputError(f"{item.relative_path}: pixel data is shorter than its frames")
    if elem.value is not None:
        data = np.frombuffer(elem.value, dtype=dtype, count=count, offset=frame * size)
    else:
        with item.path.open("rb") as fp:
            fp.seek(elem.value_tell + frame * size)
            data = np.fromfile(fp, dtype=dtype, count=count)
        if data.size != count:
            raise InvalidInputError(f"{item.relative_path}: pixel data is truncated")
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        data = data.byteswap()
    return _fix_bits(data.reshape(rows, cols), ds)


def _fix_bits(image: Array, ds: Dataset) -> Array:
    """Clear bits above BitsStored, and sign-extend signed values, as the standard says."""
    allocated = int(ds.get("BitsAllocated", 16))
    stored = int(ds.get("BitsStored", allocated))
    if stored >= allocated:
        return image
    if int(ds.get("PixelRepresentation", 0)) == 1:
        shift = allocated - stored
        extended: Array = (image << shift) >> shift
        return extended
    masked: Array = image & np.array((1 << stored) - 1, dtype=image.dtype)
    return masked


def _invert(volume: Array, ds: Dataset) -> None:
    stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if volume.dtype.kind == "u":
        np.subtract(np.array((1 << stored) - 1, dtype=volume.dtype), volume, out=volume)
    else:
        np.subtract(np.array(-1, dtype=volume.dtype), volume, out=volume)


def _rescale(volume: Array, frames: Sequence[Frame], notes: list[str]) -> Array:
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return volume
    flat = volume.reshape(-1, *volume.shape[2:])
    integral = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    if integral:
        lo, hi = int(flat.min()), int(flat.max())
        ends = [s * v + b for s, b in zip(slopes, intercepts, strict=True) for v in (lo, hi)]
        target = _smallest_int_type(int(min(ends)), int(max(ends)))
        if target is not None:
            out = _rescale_into(flat, slopes, intercepts, target, in_place=True)
            notes.append(f"rescale slope and intercept applied ({np.dtype(target).name})")
            return out.reshape(volume.shape)
    out = _rescale_into(flat, slopes, intercepts, np.dtype(np.float32), in_place=False)
    notes.append("rescale slope and intercept applied (float32)")
    return out.reshape(volume.shape)


def _smallest_int_type(lo: int, hi: int) -> np.dtype[Any] | None:
    for candidate in _INT_TYPES:
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return np.dtype(candidate)
    return None


def _rescale_into(
    flat: Array, slopes: Array, intercepts: Array, target: np.dtype[Any], in_place: bool
) -> Array:
    """Apply per-slice rescaling slice by slice, reusing the buffer when sizes allow."""
    reuse = in_place and target.itemsize == flat.dtype.itemsize
    out = flat.view(target) if reuse else np.empty(flat.shape, dtype=target)
    work = np.float64 if target.kind == "f" else np.int64
    for i in range(flat.shape[0]):
        scaled = flat[i].astype(work) * slopes[i] + intercepts[i]
        out[i] = scaled if target.kind == "f" else np.rint(scaled)
    return out
