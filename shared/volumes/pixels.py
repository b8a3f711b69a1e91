"""Pixel loading: frames into one volume, rescaled, in a sensible pixel type.

Uncompressed little- and big-endian pixel data is read straight from the file at its
offset; compressed data (RLE, JPEG, JPEG-LS, JPEG 2000) goes through pydicom's decoders,
one file at a time. Each frame is inverted (MONOCHROME1, so that higher means brighter as
in MONOCHROME2), turned upside down when it was stored so (a reversed phase-encoding
polarity, ``Frame.flip_rows``) and rescaled (slope and intercept) on its own, directly into
the output buffer, so a volume costs its own size in memory.

The output type is chosen before reading whenever it can be: the stored type when there is
no rescaling, else the smallest integer type that holds the rescaled range of BitsStored
when every slope and intercept is integral and that type is no wider than the stored one.
Otherwise the stored values are read first and the type is chosen from their actual range
(an integer type if one fits, float32 when a slope or intercept is fractional).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.dicom.files import InstanceFile
from shared.errors import InvalidInputError
from shared.volumes.frames import Frame

Array = np.ndarray[Any, np.dtype[Any]]
Allocator = Callable[[tuple[int, ...], np.dtype[Any]], Array]
"""Returns a writable, zero-initialised array of the given shape and type."""

_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_INT_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)


def numpy_allocator(shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
    return np.zeros(shape, dtype=dtype)


@dataclass(frozen=True)
class _Encoding:
    """How a stack's stored values are turned into output values."""

    stored: np.dtype[Any]
    bits_stored: int
    samples: int
    invert: bool
    slopes: Array
    intercepts: Array

    @property
    def rescaled(self) -> bool:
        return bool(np.any(self.slopes != 1.0) or np.any(self.intercepts != 0.0))

    @property
    def integral(self) -> bool:
        return bool(
            np.all(self.slopes == np.round(self.slopes))
            and np.all(self.intercepts == np.round(self.intercepts))
        )

    def stored_range(self) -> tuple[int, int]:
        if self.stored.kind == "u":
            return 0, (1 << self.bits_stored) - 1
        return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1


def stored_dtype(ds: Dataset) -> np.dtype[Any]:
    bits = int(ds.get("BitsAllocated", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if bits == 1:
        raise InvalidInputError("1-bit pixel data (a segmentation or overlay) is not a volume")
    if bits not in (8, 16, 32):
        raise InvalidInputError(f"BitsAllocated {bits} is not supported")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


def _encoding(ds: Dataset, frames: Sequence[Frame]) -> _Encoding:
    samples = int(ds.get("SamplesPerPixel", 1))
    stored = stored_dtype(ds)
    bits = int(ds.get("BitsStored", stored.itemsize * 8) or stored.itemsize * 8)
    if samples > 1:  # colour: decoded as is, never rescaled
        return _Encoding(stored, bits, samples, False, np.ones(1), np.zeros(1))
    return _Encoding(
        stored=stored,
        bits_stored=min(bits, stored.itemsize * 8),
        samples=samples,
        invert=str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
        slopes=np.array([f.slope for f in frames], dtype=np.float64),
        intercepts=np.array([f.intercept for f in frames], dtype=np.float64),
    )


def _smallest_int_type(lo: float, hi: float) -> np.dtype[Any] | None:
    for candidate in _INT_TYPES:
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return np.dtype(candidate)
    return None


def _output_type(enc: _Encoding, lo: int, hi: int) -> np.dtype[Any]:
    """The output type for stored values in ``[lo, hi]``."""
    if not enc.rescaled:
        return enc.stored
    if enc.integral:
        ends = np.concatenate([enc.slopes * lo + enc.intercepts, enc.slopes * hi + enc.intercepts])
        found = _smallest_int_type(float(ends.min()), float(ends.max()))
        if found is not None:
            return found
    return np.dtype(np.float32)


def load_stack(
    files: Sequence[InstanceFile],
    frames: Sequence[Sequence[Frame]],
    allocate: Allocator = numpy_allocator,
) -> tuple[Array, list[str]]:
    """Pixels of ``frames[t][z]`` as an array ``(t, z, rows, columns[, samples])``.

    The array comes from ``allocate`` (so it can be an image library's own buffer).
    Returns it with notes on what was done to the values.
    """
    first = files[frames[0][0].instance].dataset
    flat = [f for row in frames for f in row]
    enc = _encoding(first, flat)
    rows, cols = flat[0].rows, flat[0].columns
    shape: tuple[int, ...] = (len(frames), len(frames[0]), rows, cols)
    if enc.samples > 1:
        shape = (*shape, enc.samples)
    notes: list[str] = []
    if enc.invert:
        notes.append("MONOCHROME1 inverted to MONOCHROME2")
    lo, hi = enc.stored_range()
    target = _output_type(enc, lo, hi)
    if target.itemsize <= enc.stored.itemsize or (target.kind == "f" and not enc.integral):
        out = allocate(shape, target)
        _read_frames(files, frames, lambda index, image: _store(out, index, image, enc))
    else:
        # The type depends on the values: read them first, then choose.
        raw = np.empty(shape, dtype=enc.stored)
        _read_frames(files, frames, lambda index, image: raw.__setitem__(index, image))
        target = _output_type(enc, int(raw.min()), int(raw.max()))
        out = allocate(shape, target)
        for n, index in enumerate(np.ndindex(*shape[:2])):
            _store(out, index, raw[index], enc, n)
        del raw
    if enc.rescaled:
        notes.append(f"rescale slope and intercept applied ({target.name})")
    return out, notes


def _store(
    out: Array, index: tuple[int, int], image: Array, enc: _Encoding, n: int | None = None
) -> None:
    """Invert and rescale one stored frame into ``out[index]``."""
    if n is None:
        n = index[0] * out.shape[1] + index[1]
    if enc.invert:
        top = (1 << enc.bits_stored) - 1 if enc.stored.kind == "u" else -1
        image = np.subtract(np.array(top, dtype=enc.stored), image, dtype=enc.stored)
    if not enc.rescaled:
        out[index] = image
        return
    slope, intercept = enc.slopes[n], enc.intercepts[n]
    if out.dtype.kind == "f":
        out[index] = image.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        return
    # Integer output: the type was chosen so that the result fits; compute in int32 when
    # the output fits in it, which is every case but uint32.
    work = np.dtype(np.int64 if out.dtype.itemsize >= 4 else np.int32)
    scaled: Array = image.astype(work)
    if slope != 1.0:
        np.multiply(scaled, int(slope), out=scaled)
    np.add(scaled, int(intercept), out=scaled)
    out[index] = scaled


def _read_frames(
    files: Sequence[InstanceFile],
    frames: Sequence[Sequence[Frame]],
    sink: Callable[[tuple[int, int], Array], None],
) -> None:
    """Decode every frame and hand it to ``sink`` with its ``(t, z)`` index."""
    by_instance: dict[int, list[tuple[tuple[int, int], Frame]]] = {}
    for t, row in enumerate(frames):
        for z, frame in enumerate(row):
            by_instance.setdefault(frame.instance, []).append(((t, z), frame))
    for instance, targets in by_instance.items():
        item = files[instance]
        for index, image in _decode_instance(item, targets):
            sink(index, image)


def _decode_instance(
    item: InstanceFile, targets: list[tuple[tuple[int, int], Frame]]
) -> list[tuple[tuple[int, int], Array]]:
    ds = item.dataset
    syntax = ds.file_meta.TransferSyntaxUID
    direct = syntax in _NATIVE and int(ds.get("SamplesPerPixel", 1)) == 1
    try:
        whole: Array | None = None
        result = []
        for index, frame in targets:
            if direct and frame.tile is None:
                image = _read_native_frame(item, frame.frame)
            else:
                if whole is None:
                    whole = pixel_array(str(item.path), raw=False)
                image = whole[frame.frame] if _has_frame_axis(ds, whole) else whole
                if frame.tile is not None:
                    image = _tile(image, frame)
            if image.shape[:2] != (frame.rows, frame.columns):
                raise InvalidInputError(
                    f"{item.relative_path}: frame of {image.shape[0]}x{image.shape[1]} where "
                    f"{frame.rows}x{frame.columns} was expected"
                )
            result.append((index, image[::-1] if frame.flip_rows else image))
        return result
    except InvalidInputError:
        raise
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise InvalidInputError(
            f"pixel data of {item.relative_path} cannot be decoded: "
            f"{type(exc).__name__}: {first_line}"
        ) from exc


def _tile(image: Array, frame: Frame) -> Array:
    tiles = image.shape[1] // frame.columns
    r, c = divmod(frame.tile or 0, tiles)
    return image[r * frame.rows : (r + 1) * frame.rows, c * frame.columns : (c + 1) * frame.columns]


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
        decoded: Array = pixel_array(str(item.path), index=index)
        return decoded
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
