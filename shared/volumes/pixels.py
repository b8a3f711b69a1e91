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

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.dicom.attributes import attribute
from shared.dicom.files import InstanceFile
from shared.errors import InvalidInputError
from shared.volumes.frames import Frame
from shared.volumes.writer import zeroed

Array = np.ndarray[Any, np.dtype[Any]]
Allocator = Callable[[tuple[int, ...], np.dtype[Any]], Array]
"""Returns a writable, zero-initialised array of the given shape and type."""


@runtime_checkable
class FrameSink(Protocol):
    """An allocator whose array lies in a file, and which writes a frame there itself
    (:class:`shared.volumes.writer.VolumeBuffer`). Frames read straight from their file
    are then read into one small array, transformed there and written with one
    ``pwrite``, instead of read into the file's memory mapping: filling a new file through
    its mapping costs a page fault and a file-system call for every 4 KiB page, about 0.3
    s for a 150 MiB volume here, against under 0.1 s."""

    def __call__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array: ...

    def put_frame(self, index: tuple[int, int], values: Array) -> bool:
        """Write ``values`` (the output type) as frame ``index`` (t, z) of the array last
        allocated; False if it cannot (then the caller writes into the array)."""
        ...


_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_INT_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)


def numpy_allocator(shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
    return zeroed(shape, dtype)


@dataclass(frozen=True)
class _Encoding:
    """How a stack's stored values are turned into output values."""

    stored: np.dtype[Any]
    bits_stored: int
    samples: int
    invert: bool
    slopes: Array
    intercepts: Array

    @cached_property
    def rescaled(self) -> bool:
        """Whether any frame has a slope other than 1 or an intercept other than 0 (asked
        once a frame: computed once, not once a frame over every frame)."""
        return bool(np.any(self.slopes != 1.0) or np.any(self.intercepts != 0.0))

    @cached_property
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
    bits = int(attribute(ds, "BitsAllocated", 16))
    signed = int(attribute(ds, "PixelRepresentation", 0)) == 1
    if bits == 1:
        raise InvalidInputError("1-bit pixel data (a segmentation or overlay) is not a volume")
    if bits not in (8, 16, 32):
        raise InvalidInputError(f"BitsAllocated {bits} is not supported")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


def _encoding(ds: Dataset, frames: Sequence[Frame]) -> _Encoding:
    samples = int(attribute(ds, "SamplesPerPixel", 1))
    stored = stored_dtype(ds)
    bits = int(attribute(ds, "BitsStored", stored.itemsize * 8) or stored.itemsize * 8)
    if samples > 1:  # colour: decoded as is, never rescaled
        return _Encoding(stored, bits, samples, False, np.ones(1), np.zeros(1))
    return _Encoding(
        stored=stored,
        bits_stored=min(bits, stored.itemsize * 8),
        samples=samples,
        invert=str(attribute(ds, "PhotometricInterpretation", "")) == "MONOCHROME1",
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
        sink = allocate if isinstance(allocate, FrameSink) else None
        _load_into(out, files, frames, enc, sink=sink)
    else:
        # The type depends on the values: read them first, then choose.
        raw = np.empty(shape, dtype=enc.stored)
        _load_into(raw, files, frames, enc, stored_only=True)
        target = _output_type(enc, int(raw.min()), int(raw.max()))
        out = allocate(shape, target)
        for n, index in enumerate(np.ndindex(*shape[:2])):
            _store(out, index, raw[index], enc, n)
        del raw
    if enc.rescaled:
        notes.append(f"rescale slope and intercept applied ({target.name})")
    return out, notes


def _load_into(
    out: Array,
    files: Sequence[InstanceFile],
    frames: Sequence[Sequence[Frame]],
    enc: _Encoding,
    stored_only: bool = False,
    sink: FrameSink | None = None,
) -> None:
    """Every frame into ``out[t, z]``: inverted and rescaled, or (``stored_only``, ``out``
    of the stored type) as stored. With ``sink`` (``out``'s allocator), frames read
    straight from their file go to ``out`` through it (see :class:`FrameSink`).

    Uncompressed single-sample frames are read from their file straight into ``out`` when
    the output type has the stored type's size (the usual case: no rescaling, or CT's
    12-bit values and intercept into int16), and inverted and rescaled there in place:
    integer arithmetic modulo 2^bits gives the exact result whenever the result fits the
    output type, which the type was chosen for. Otherwise a frame goes through one scratch
    array of the stored type, or through pydicom's decoders (compressed data).

    A volume of :data:`TWO_THREADS_FROM` bytes or more whose frames are all read from their
    files is loaded by two threads."""
    in_place = stored_only or (
        out.dtype.itemsize == enc.stored.itemsize and out.dtype.kind in "iu" and enc.samples == 1
    )
    loads: list[Callable[[], None]] = []
    direct = True  # every file's frames read at their offset: no pydicom, no lock held
    unreadable: tuple[InstanceFile, Exception] | None = None  # a file whose layout is not
    for instance, targets in _by_instance(frames).items():
        item = files[instance]
        try:
            layout = _native_layout(item)
        except Exception as exc:
            unreadable = (item, exc)  # raised after the files before it are loaded
            break
        loads.append(
            partial(_load_instance, out, item, layout, targets, enc, stored_only, in_place, sink)
        )
        direct = direct and layout is not None and all(f.tile is None for _, f in targets)
    if unreadable is None and direct and len(loads) >= 2 and out.nbytes >= TWO_THREADS_FROM:
        _in_two_threads(loads)
        return
    for load in loads:
        load()
    if unreadable is not None:
        item, error = unreadable
        if isinstance(error, InvalidInputError):
            raise error
        raise _undecodable(item, error) from error


TWO_THREADS_FROM = 8 * 1024 * 1024
"""A volume of this many bytes or more has its frames read from their files by two
threads (:func:`_in_two_threads`): reading, rescaling and writing a frame hold no lock
Python's threads share (system calls and numpy), so the second core halves the time
(a CT of 300 x 512², 67 -> 38 ms here). Smaller volumes are not worth a thread."""


def _in_two_threads(loads: Sequence[Callable[[], None]]) -> None:
    """Run the first half of ``loads`` here and the second on a thread of its own, each
    half in order, and raise what running them all in order would raise: the failure of
    the first load that fails. A half stops at its first failure, and the second half also
    at the first half's (every load of the first half comes before its own). Interrupted
    (a signal's exception), it returns only once the second half has stopped."""
    failures: list[BaseException | None] = [None, None]
    first_failed = threading.Event()
    second_done = threading.Event()

    def run(part: Sequence[Callable[[], None]], slot: int) -> None:
        try:
            for load in part:
                if slot == 1 and first_failed.is_set():
                    return
                load()
        except BaseException as exc:  # raised by the caller's thread
            failures[slot] = exc
            if slot == 0:
                first_failed.set()
        finally:
            if slot == 1:
                second_done.set()

    half = len(loads) // 2
    second = threading.Thread(target=run, args=(loads[half:], 1), name="pixels", daemon=True)
    second.start()
    try:
        run(loads[:half], 0)
        second_done.wait()
    except BaseException:  # a signal's exception (Ctrl-C, SIGTERM) while waiting for it
        # The second half must end before the caller closes the file it writes to (its
        # descriptor could be reused by the next file opened): it stops at its next load.
        # Waited for with an event of its own: after an interrupted join, Python 3.11's
        # Thread.is_alive() answers False while the thread still runs.
        first_failed.set()
        while not second_done.is_set():
            with suppress(BaseException):
                second_done.wait()
        raise
    second.join()
    for failure in failures:
        if failure is not None:
            raise failure


def _load_instance(
    out: Array,
    item: InstanceFile,
    layout: _NativeLayout | None,
    targets: list[tuple[tuple[int, int], Frame]],
    enc: _Encoding,
    stored_only: bool,
    in_place: bool,
    sink: FrameSink | None = None,
) -> None:
    """``item``'s frames into ``out`` (see :func:`_load_into`): read at their offset with
    ``layout``, or decoded by pydicom (no layout, or tiles of a mosaic)."""
    if layout is None or any(frame.tile is not None for _, frame in targets):
        for index, image in _decode_instance(item, targets):  # decoded once per file
            if stored_only:
                out[index] = image
            else:
                _store(out, index, image, enc, index[0] * out.shape[1] + index[1])
        return
    scratch: Array | None = None
    if not in_place or stored_only:
        sink = None  # only frames transformed in place are written through the sink
    for index, frame in targets:
        n = index[0] * out.shape[1] + index[1]
        _check_frame(item, frame, layout)
        if in_place and sink is None:
            dst = out[index].view(layout.dtype)
        else:
            if scratch is None:
                scratch = np.empty((frame.rows, frame.columns), dtype=layout.dtype)
            dst = scratch
        try:
            layout.read(item, frame.frame, dst)
        except InvalidInputError:
            raise
        except Exception as exc:
            raise _undecodable(item, exc) from exc
        if frame.flip_rows:
            dst[...] = dst[::-1].copy()
        if stored_only:
            continue
        if in_place:
            _transform_in_place(dst, enc, n)
            if sink is not None and not sink.put_frame(index, dst.view(out.dtype)):
                out[index] = dst.view(out.dtype)
        else:
            _store(out, index, dst, enc, n)


def _transform_in_place(values: Array, enc: _Encoding, n: int) -> None:
    """Invert and rescale stored values where they lie, into the output type of the same
    size (the result reinterpreted as that type): exact, since the result fits it."""
    if enc.invert:
        top = (1 << enc.bits_stored) - 1 if enc.stored.kind == "u" else -1
        np.subtract(np.array(top, dtype=values.dtype), values, out=values)
    if not enc.rescaled:
        return
    modulus = 1 << (8 * values.dtype.itemsize)
    unsigned = values.view(f"u{values.dtype.itemsize}")
    slope, intercept = int(enc.slopes[n]), int(enc.intercepts[n])
    if slope != 1:
        np.multiply(unsigned, np.array(slope % modulus, dtype=unsigned.dtype), out=unsigned)
    if intercept != 0:
        np.add(unsigned, np.array(intercept % modulus, dtype=unsigned.dtype), out=unsigned)


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


def _by_instance(
    frames: Sequence[Sequence[Frame]],
) -> dict[int, list[tuple[tuple[int, int], Frame]]]:
    """The frames grouped by the file they are in, with their ``(t, z)`` index."""
    by_instance: dict[int, list[tuple[tuple[int, int], Frame]]] = {}
    for t, row in enumerate(frames):
        for z, frame in enumerate(row):
            by_instance.setdefault(frame.instance, []).append(((t, z), frame))
    return by_instance


def _decode_instance(
    item: InstanceFile, targets: list[tuple[tuple[int, int], Frame]]
) -> list[tuple[tuple[int, int], Array]]:
    """Frames of ``item`` decoded by pydicom (compressed or colour data, tiles)."""
    ds = item.dataset
    try:
        whole: Array | None = None
        result = []
        for index, frame in targets:
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
        raise _undecodable(item, exc) from exc


def _undecodable(item: InstanceFile, exc: Exception) -> InvalidInputError:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return InvalidInputError(
        f"pixel data of {item.relative_path} cannot be decoded: {type(exc).__name__}: {first_line}"
    )


def _tile(image: Array, frame: Frame) -> Array:
    tiles = image.shape[1] // frame.columns
    r, c = divmod(frame.tile or 0, tiles)
    return image[r * frame.rows : (r + 1) * frame.rows, c * frame.columns : (c + 1) * frame.columns]


def _has_frame_axis(ds: Dataset, pixels: Array) -> bool:
    frames = int(attribute(ds, "NumberOfFrames", 1) or 1)
    samples = int(attribute(ds, "SamplesPerPixel", 1))
    return frames > 1 and pixels.ndim == (4 if samples > 1 else 3)


@dataclass(frozen=True)
class _NativeLayout:
    """Where and how a file's uncompressed, single-sample frames are stored."""

    offset: int  # of the pixel data's value in the file
    length: int
    value: bytes | None  # the value, when it was read with the header
    dtype: np.dtype[Any]
    rows: int
    columns: int
    big_endian: bool
    bits_allocated: int
    bits_stored: int
    signed: bool

    def read(self, item: InstanceFile, frame: int, dst: Array) -> None:
        """Frame ``frame``'s stored values into ``dst`` (rows x columns of ``dtype``), in
        native byte order with the bits above BitsStored cleared (or sign-extended)."""
        size = dst.nbytes
        if self.length < (frame + 1) * size:
            raise InvalidInputError(f"{item.relative_path}: pixel data is shorter than its frames")
        target = dst.reshape(-1).view(np.uint8)
        if self.value is not None:
            target[...] = np.frombuffer(self.value, dtype=np.uint8, count=size, offset=frame * size)
        else:
            done = _read_at(item.path, self.offset + frame * size, target)
            if done != size:
                raise InvalidInputError(f"{item.relative_path}: pixel data is truncated")
        if self.big_endian:
            dst.byteswap(inplace=True)
        _fix_bits(dst, self.bits_allocated, self.bits_stored, self.signed)


def _read_at(path: Path, offset: int, target: Array) -> int:
    """Read ``target.nbytes`` bytes of ``path`` at ``offset`` into ``target``."""
    view = memoryview(target.data).cast("B")
    done = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                break
            done += got
    finally:
        os.close(fd)
    return done


def _native_layout(item: InstanceFile) -> _NativeLayout | None:
    """How to read ``item``'s frames straight from the file; None when pydicom must
    decode them (compressed, colour, or pixel data of undefined length)."""
    ds = item.dataset
    if (
        ds.file_meta.TransferSyntaxUID not in _NATIVE
        or int(attribute(ds, "SamplesPerPixel", 1)) != 1
    ):
        return None
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
        return None
    dtype = stored_dtype(ds)
    allocated = int(attribute(ds, "BitsAllocated", 16))
    return _NativeLayout(
        offset=elem.value_tell,
        length=elem.length,
        value=elem.value,
        dtype=dtype,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        big_endian=ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian,
        bits_allocated=allocated,
        bits_stored=int(attribute(ds, "BitsStored", allocated)),
        signed=int(attribute(ds, "PixelRepresentation", 0)) == 1,
    )


def _check_frame(item: InstanceFile, frame: Frame, layout: _NativeLayout) -> None:
    if (layout.rows, layout.columns) != (frame.rows, frame.columns):
        raise InvalidInputError(
            f"{item.relative_path}: frame of {layout.rows}x{layout.columns} where "
            f"{frame.rows}x{frame.columns} was expected"
        )


def _fix_bits(image: Array, allocated: int, stored: int, signed: bool) -> None:
    """Clear bits above BitsStored, and sign-extend signed values, as the standard says."""
    if stored >= allocated:
        return
    if signed:
        shift = np.array(allocated - stored, dtype=image.dtype)
        np.left_shift(image, shift, out=image)
        np.right_shift(image, shift, out=image)
        return
    np.bitwise_and(image, np.array((1 << stored) - 1, dtype=image.dtype), out=image)
