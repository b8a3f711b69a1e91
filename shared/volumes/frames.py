"""Frames: the 2-D images a series is made of, with their geometry.

A classic image file holds one frame; an enhanced multi-frame file holds many, described by
its per-frame and shared functional groups; a Siemens mosaic holds a grid of slices in one
image; an RT Dose holds frames at offsets along the normal. Everything downstream (stacking,
checks, pixel loading) works on :class:`Frame` and does not care which it came from.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from shared.dicom.files import InstanceFile

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class Frame:
    """One 2-D image of a series and everything needed to place and load it."""

    instance: int  # index of the file in the series' file list
    frame: int  # frame index within the file (0-based)
    tile: int | None  # mosaic tile index, None if not a mosaic
    rows: int
    columns: int
    position: Vector | None  # ImagePositionPatient of the first pixel (LPS, mm)
    row_cosine: Vector | None  # direction of increasing column index
    column_cosine: Vector | None  # direction of increasing row index
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    slice_thickness: float | None
    spacing_between_slices: float | None
    slope: float
    intercept: float
    stack_key: tuple[Any, ...]  # frames with different keys never share a volume
    order_key: tuple[Any, ...]  # temporal order of frames at the same position
    stack_attributes: tuple[tuple[str, Any], ...]  # what the stack key is made of, for metadata


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _first(*values: float | None, default: float) -> float:
    """The first value that is given (0 counts as given), else ``default``."""
    return next((v for v in values if v is not None), default)


def _geometry(
    orientation: tuple[Vector, Vector] | None,
    position: tuple[float, ...] | None,
    spacing: tuple[float, ...] | None,
) -> dict[str, Any]:
    """Frame fields for a plane's position, orientation and pixel spacing."""
    return {
        "position": position,
        "row_cosine": orientation[0] if orientation else None,
        "column_cosine": orientation[1] if orientation else None,
        "pixel_spacing": spacing,
    }


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of a sequence attribute, or None."""
    if ds is None:
        return None
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _orientation(value: Any) -> tuple[Vector, Vector] | None:
    iop = _floats(value, 6)
    if iop is None:
        return None
    row, col = np.array(iop[:3]), np.array(iop[3:])
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        return None
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return (
        (float(row[0]), float(row[1]), float(row[2])),
        (float(col[0]), float(col[1]), float(col[2])),
    )


def _image_kind(ds: Dataset) -> tuple[str, ...]:
    """The part of ImageType that tells magnitude from phase and the like."""
    image_type = ds.get("ImageType") or []
    return tuple(str(v).upper() for v in image_type)


def frames_of(item: InstanceFile, index: int) -> list[Frame]:
    """All frames of one file."""
    ds = item.dataset
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, index)
    image_type = _image_kind(ds)
    if "MOSAIC" in image_type:
        mosaic = _mosaic_frames(ds, index)
        if mosaic is not None:
            return mosaic
    if "GridFrameOffsetVector" in ds and _int(ds.get("NumberOfFrames"), 1) > 1:
        return _grid_frames(ds, index)
    return _classic_frames(ds, index)


def _common_keys(ds: Dataset) -> tuple[tuple[str, Any], ...]:
    return (
        ("Rows", _int(ds.get("Rows"))),
        ("Columns", _int(ds.get("Columns"))),
        ("SamplesPerPixel", _int(ds.get("SamplesPerPixel"), 1)),
        ("PhotometricInterpretation", str(ds.get("PhotometricInterpretation", ""))),
        ("BitsAllocated", _int(ds.get("BitsAllocated"))),
    )


def _classic_frames(ds: Dataset, index: int) -> list[Frame]:
    orientation = _orientation(ds.get("ImageOrientationPatient"))
    position = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2) or _floats(ds.get("ImagerPixelSpacing"), 2)
    echo = _float(ds.get("EchoTime"))
    echo_number = _int(ds.get("EchoNumbers"), 0)
    stack_attrs = (
        ("ImageType", _image_kind(ds)),
        ("EchoNumbers", echo_number),
        ("EchoTime", None if echo is None else round(echo, 3)),
    )
    order = (
        _int(ds.get("TemporalPositionIdentifier"), 0),
        _int(ds.get("InstanceNumber"), 0),
        index,
    )
    count = max(_int(ds.get("NumberOfFrames"), 1), 1)
    return [
        Frame(
            instance=index,
            frame=f,
            tile=None,
            rows=_int(ds.get("Rows")),
            columns=_int(ds.get("Columns")),
            **_geometry(orientation, position, spacing),
            slice_thickness=_float(ds.get("SliceThickness")),
            spacing_between_slices=_float(ds.get("SpacingBetweenSlices")),
            slope=_first(_float(ds.get("RescaleSlope")), default=1.0),
            intercept=_first(_float(ds.get("RescaleIntercept")), default=0.0),
            stack_key=(*_common_keys(ds), *stack_attrs),
            order_key=(*order, f),
            stack_attributes=stack_attrs,
        )
        for f in range(count)
    ]


def _grid_frames(ds: Dataset, index: int) -> list[Frame]:
    """RT Dose style multi-frame: one position plus offsets along the normal."""
    base = _classic_frames(ds, index)
    offsets = [_float(v) for v in ds.get("GridFrameOffsetVector") or []]
    first = base[0]
    if (
        first.position is None
        or first.row_cosine is None
        or first.column_cosine is None
        or len(offsets) != len(base)
        or any(o is None for o in offsets)
    ):
        return base
    normal = np.cross(first.row_cosine, first.column_cosine)
    slope = _float(ds.get("DoseGridScaling")) or first.slope
    frames = []
    for frame, offset in zip(base, offsets, strict=True):
        pos = np.array(first.position) + float(offset or 0.0) * normal
        frames.append(
            _replace(frame, position=(float(pos[0]), float(pos[1]), float(pos[2])), slope=slope)
        )
    return frames


def _replace(frame: Frame, **changes: Any) -> Frame:
    from dataclasses import replace

    return replace(frame, **changes)


def _enhanced_frames(ds: Dataset, index: int) -> list[Frame]:
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame: Sequence[Dataset] = ds.get("PerFrameFunctionalGroupsSequence") or []
    count = max(_int(ds.get("NumberOfFrames"), 1), 1)
    frames: list[Frame] = []
    for f in range(count):
        groups = per_frame[f] if f < len(per_frame) else None

        def group(keyword: str, groups: Dataset | None = groups) -> Dataset | None:
            return _item(groups, keyword) or _item(shared, keyword)

        plane_pos = group("PlanePositionSequence")
        plane_ori = group("PlaneOrientationSequence")
        measures = group("PixelMeasuresSequence")
        transform = group("PixelValueTransformationSequence")
        content = group("FrameContentSequence")
        echo_item = group("MREchoSequence")
        frame_type_item = group("MRImageFrameTypeSequence") or group("CTImageFrameTypeSequence")
        orientation = _orientation(
            plane_ori.get("ImageOrientationPatient")
            if plane_ori
            else ds.get("ImageOrientationPatient")
        )
        position = _floats(
            plane_pos.get("ImagePositionPatient") if plane_pos else ds.get("ImagePositionPatient"),
            3,
        )
        spacing = _floats(measures.get("PixelSpacing") if measures else None, 2) or _floats(
            ds.get("PixelSpacing"), 2
        )
        frame_type = tuple(
            str(v).upper()
            for v in ((frame_type_item.get("FrameType") if frame_type_item else None) or [])
        )
        component = str(frame_type_item.get("ComplexImageComponent", "")) if frame_type_item else ""
        echo = _float(echo_item.get("EffectiveEchoTime")) if echo_item else None
        stack_attrs = (
            ("FrameType", frame_type),
            ("ComplexImageComponent", component),
            ("EffectiveEchoTime", None if echo is None else round(echo, 3)),
        )
        temporal = _int(content.get("TemporalPositionIndex"), 0) if content else 0
        frames.append(
            Frame(
                instance=index,
                frame=f,
                tile=None,
                rows=_int(ds.get("Rows")),
                columns=_int(ds.get("Columns")),
                **_geometry(orientation, position, spacing),
                slice_thickness=_float(measures.get("SliceThickness")) if measures else None,
                spacing_between_slices=(
                    _float(measures.get("SpacingBetweenSlices")) if measures else None
                ),
                slope=_first(
                    _float(transform.get("RescaleSlope")) if transform else None,
                    _float(ds.get("RescaleSlope")),
                    default=1.0,
                ),
                intercept=_first(
                    _float(transform.get("RescaleIntercept")) if transform else None,
                    _float(ds.get("RescaleIntercept")),
                    default=0.0,
                ),
                stack_key=(*_common_keys(ds), *stack_attrs),
                order_key=(temporal, _int(ds.get("InstanceNumber"), 0), index, f),
                stack_attributes=stack_attrs,
            )
        )
    return frames


def _mosaic_frames(ds: Dataset, index: int) -> list[Frame] | None:
    """Siemens mosaic: n slices tiled in one image. None if it cannot be unpacked."""
    count = _int(ds.get((0x0019, 0x100A)).value if (0x0019, 0x100A) in ds else None, 0)
    normal: np.ndarray[Any, np.dtype[np.float64]] | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom import csareader

            csa = csareader.get_csa_header(ds, "image")
        if csa:
            count = count or _int(csareader.get_n_mosaic(csa), 0)
            vec = csareader.get_slice_normal(csa)
            if vec is not None:
                normal = np.asarray(vec, dtype=float)
    except Exception:  # a broken private header just means: not unpackable
        csa = None
    base = _classic_frames(ds, index)[0]
    if count < 1 or base.position is None or base.row_cosine is None:
        return None
    if base.column_cosine is None or base.pixel_spacing is None:
        return None
    tiles = math.ceil(math.sqrt(count))
    rows, cols = base.rows // tiles, base.columns // tiles
    if rows * tiles != base.rows or cols * tiles != base.columns:
        return None
    row_cos, col_cos = np.array(base.row_cosine), np.array(base.column_cosine)
    if normal is None or np.linalg.norm(normal) < 1e-6:
        normal = np.cross(row_cos, col_cos)
    normal = normal / np.linalg.norm(normal)
    # The header's position is that of the whole mosaic; move it to the first tile.
    row_spacing, col_spacing = base.pixel_spacing
    first = (
        np.array(base.position)
        + col_cos * row_spacing * (base.rows - rows) / 2
        + row_cos * col_spacing * (base.columns - cols) / 2
    )
    step = base.spacing_between_slices or base.slice_thickness or 1.0
    frames = []
    for tile in range(count):
        pos = first + tile * step * normal
        frames.append(
            _replace(
                base,
                tile=tile,
                rows=rows,
                columns=cols,
                position=(float(pos[0]), float(pos[1]), float(pos[2])),
                stack_key=(("Mosaic", tiles), ("Rows", rows), ("Columns", cols), *base.stack_key),
                order_key=(*base.order_key, tile),
            )
        )
    return frames
