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

from shared.dicom.attributes import attribute
from shared.dicom.files import InstanceFile
from shared.volumes.kinds import (
    PHILIPS_PER_FRAME_PRIVATE,
    display_scale,
    image_kind,
    philips_diffusion_order,
    philips_scale_slope,
    private_value,
    vendor,
)

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
    refusal: tuple[str, str] | None = None  # (code, reason) when the frame cannot be placed
    kind: str = ""  # MAGNITUDE, PHASE, FIELD_MAP_HZ, TRACE, … (shared.volumes.kinds)
    repetition_time: float | None = None  # ms, from the functional groups or the file
    scale_source: str = ""  # "RescaleSlope", "RealWorldValueMapping" or "" (none)
    philips_scale_slope: float | None = None  # Philips private (2005,100E), for precise values
    flip_rows: bool = False  # stored upside down (reversed phase-encoding polarity)


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


def _given(*values: float | None) -> float | None:
    """The first value that is given (0 counts as given), else None."""
    return next((v for v in values if v is not None), None)


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
    seq = attribute(ds, keyword)
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
    image_type = attribute(ds, "ImageType") or []
    return tuple(str(v).upper() for v in image_type)


def frames_of(item: InstanceFile, index: int) -> list[Frame]:
    """All frames of one file."""
    ds = item.dataset
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, index)
    image_type = _image_kind(ds)
    if "MOSAIC" in image_type:
        return _mosaic_frames(ds, index)
    if "VFRAME" in image_type and _UIH_SLICES in ds:
        return _uih_mosaic_frames(ds, index)
    if "GridFrameOffsetVector" in ds and _int(attribute(ds, "NumberOfFrames"), 1) > 1:
        return _grid_frames(ds, index)
    return _classic_frames(ds, index)


def _common_keys(ds: Dataset) -> tuple[tuple[str, Any], ...]:
    return (
        ("Rows", _int(attribute(ds, "Rows"))),
        ("Columns", _int(attribute(ds, "Columns"))),
        ("SamplesPerPixel", _int(attribute(ds, "SamplesPerPixel"), 1)),
        ("PhotometricInterpretation", str(attribute(ds, "PhotometricInterpretation", ""))),
        ("BitsAllocated", _int(attribute(ds, "BitsAllocated"))),
    )


def _classic_frames(ds: Dataset, index: int) -> list[Frame]:
    orientation = _orientation(attribute(ds, "ImageOrientationPatient"))
    position = _floats(attribute(ds, "ImagePositionPatient"), 3)
    spacing = _floats(attribute(ds, "PixelSpacing"), 2) or _floats(
        attribute(ds, "ImagerPixelSpacing"), 2
    )
    echo = _float(attribute(ds, "EchoTime"))
    echo_number = _int(attribute(ds, "EchoNumbers"), 0)
    image_type = _image_kind(ds)
    maker = vendor(ds)
    kind = image_kind(
        ds,
        image_type,
        directionality=str(attribute(ds, "DiffusionDirectionality", "")),
        b_value=_float(attribute(ds, "DiffusionBValue")),
        maker=maker,
    )
    stack_attrs = (
        ("ImageType", image_type),
        ("EchoNumbers", echo_number),
        ("EchoTime", None if echo is None else round(echo, 3)),
        *kind.key,
    )
    scale = display_scale(
        (_float(attribute(ds, "RescaleSlope")), _float(attribute(ds, "RescaleIntercept"))),
        _item(ds, "RealWorldValueMappingSequence"),
        philips_scale_slope(ds, maker),
    )
    order = (
        _int(attribute(ds, "TemporalPositionIdentifier"), 0),
        *philips_diffusion_order(ds, maker),
        _int(attribute(ds, "InstanceNumber"), 0),
        index,
    )
    count = max(_int(attribute(ds, "NumberOfFrames"), 1), 1)
    return [
        Frame(
            instance=index,
            frame=f,
            tile=None,
            rows=_int(attribute(ds, "Rows")),
            columns=_int(attribute(ds, "Columns")),
            **_geometry(orientation, position, spacing),
            slice_thickness=_float(attribute(ds, "SliceThickness")),
            spacing_between_slices=_float(attribute(ds, "SpacingBetweenSlices")),
            slope=scale.slope,
            intercept=scale.intercept,
            stack_key=(*_common_keys(ds), *stack_attrs),
            order_key=(*order, f),
            stack_attributes=stack_attrs,
            kind=kind.label,
            repetition_time=_float(attribute(ds, "RepetitionTime")),
            scale_source=scale.source,
            philips_scale_slope=scale.philips_scale_slope,
        )
        for f in range(count)
    ]


def _grid_frames(ds: Dataset, index: int) -> list[Frame]:
    """RT Dose style multi-frame: one position plus offsets along the normal."""
    base = _classic_frames(ds, index)
    offsets = [_float(v) for v in attribute(ds, "GridFrameOffsetVector") or []]
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
    slope = _float(attribute(ds, "DoseGridScaling")) or first.slope
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


_SPATIAL_DIMENSIONS = frozenset(
    {0x00209056, 0x00209057, 0x00200032}  # StackID, InStackPositionNumber, ImagePositionPatient
)


def _ordering_dimensions(ds: Dataset) -> list[int]:
    """Positions in DimensionIndexValues of the dimensions that are not spatial.

    Frames at one position are ordered by these (for example a Philips DWI's b-value and
    gradient indices) after TemporalPositionIndex: see docs/conversion.md.
    """
    keep = []
    for n, item in enumerate(attribute(ds, "DimensionIndexSequence") or []):
        pointer = item.get("DimensionIndexPointer")
        try:
            tag = int(pointer) if pointer is not None else None
        except (TypeError, ValueError):
            tag = None
        if tag not in _SPATIAL_DIMENSIONS:
            keep.append(n)
    return keep


def _dimension_order(content: Dataset | None, keep: list[int]) -> tuple[int, ...]:
    values = content.get("DimensionIndexValues") if content else None
    if values is None:
        return ()
    listed = [values] if isinstance(values, int) else list(values)
    return tuple(_int(listed[n]) for n in keep if n < len(listed))


def _enhanced_frames(ds: Dataset, index: int) -> list[Frame]:
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame: Sequence[Dataset] = attribute(ds, "PerFrameFunctionalGroupsSequence") or []
    count = max(_int(attribute(ds, "NumberOfFrames"), 1), 1)
    maker = vendor(ds)
    dimensions = _ordering_dimensions(ds)
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
        diffusion = group("MRDiffusionSequence")
        timing = group("MRTimingAndRelatedParametersSequence")
        private_items = (
            private_value(groups, PHILIPS_PER_FRAME_PRIVATE) if maker == "PHILIPS" else None
        )
        private = private_items[0] if private_items else None
        orientation = _orientation(
            plane_ori.get("ImageOrientationPatient")
            if plane_ori
            else attribute(ds, "ImageOrientationPatient")
        )
        position = _floats(
            plane_pos.get("ImagePositionPatient")
            if plane_pos
            else attribute(ds, "ImagePositionPatient"),
            3,
        )
        spacing = _floats(measures.get("PixelSpacing") if measures else None, 2) or _floats(
            attribute(ds, "PixelSpacing"), 2
        )
        frame_type = tuple(
            str(v).upper()
            for v in ((frame_type_item.get("FrameType") if frame_type_item else None) or [])
        )
        component = str(frame_type_item.get("ComplexImageComponent", "")) if frame_type_item else ""
        echo = _float(echo_item.get("EffectiveEchoTime")) if echo_item else None
        kind = image_kind(
            ds,
            frame_type,
            component,
            str(diffusion.get("DiffusionDirectionality", "")) if diffusion else "",
            _float(diffusion.get("DiffusionBValue")) if diffusion else None,
            maker,
        )
        stack_attrs = (
            ("FrameType", frame_type),
            ("ComplexImageComponent", component),
            ("EffectiveEchoTime", None if echo is None else round(echo, 3)),
            *kind.key,
        )
        temporal = _int(content.get("TemporalPositionIndex"), 0) if content else 0
        scale = display_scale(
            (
                _given(
                    _float(transform.get("RescaleSlope")) if transform else None,
                    _float(attribute(ds, "RescaleSlope")),
                ),
                _given(
                    _float(transform.get("RescaleIntercept")) if transform else None,
                    _float(attribute(ds, "RescaleIntercept")),
                ),
            ),
            group("RealWorldValueMappingSequence"),
            philips_scale_slope(private, maker) or philips_scale_slope(ds, maker),
        )
        frames.append(
            Frame(
                instance=index,
                frame=f,
                tile=None,
                rows=_int(attribute(ds, "Rows")),
                columns=_int(attribute(ds, "Columns")),
                **_geometry(orientation, position, spacing),
                slice_thickness=_float(measures.get("SliceThickness")) if measures else None,
                spacing_between_slices=(
                    _float(measures.get("SpacingBetweenSlices")) if measures else None
                ),
                slope=scale.slope,
                intercept=scale.intercept,
                stack_key=(*_common_keys(ds), *stack_attrs),
                order_key=(
                    temporal,
                    _dimension_order(content, dimensions),
                    _int(attribute(ds, "InstanceNumber"), 0),
                    index,
                    f,
                ),
                stack_attributes=stack_attrs,
                kind=kind.label,
                repetition_time=_given(
                    _float(timing.get("RepetitionTime")) if timing else None,
                    _float(attribute(ds, "RepetitionTime")),
                ),
                scale_source=scale.source,
                philips_scale_slope=scale.philips_scale_slope,
            )
        )
    return frames


_SIEMENS_MOSAIC_COUNT = (0x0019, 0x100A)
"""NumberOfImagesInMosaic, Siemens' private (0019,100A)."""
_UIH_SLICES = (0x0065, 0x1051)
"""UIH's per-slice sequence of a VFRAME mosaic: one item per tile, with its position."""
_UIH_TILE = (0x0065, 0x1004)
"""UIH's tile size as text, e.g. '64*64'."""


def _unplaced(ds: Dataset, index: int, code: str, reason: str) -> list[Frame]:
    """The file's frames as they are, marked as not forming a volume, and why."""
    return [_replace(f, refusal=(code, reason)) for f in _classic_frames(ds, index)]


def _mosaic_tiles(
    base: Frame, count: int, tile_shape: tuple[int, int]
) -> tuple[list[Frame], int] | None:
    """``count`` tiles of ``tile_shape`` cut from a mosaic frame, row by row; also the number
    of tiles per row. None when the tiles do not fit the image."""
    rows, cols = tile_shape
    if rows < 1 or cols < 1 or base.rows % rows or base.columns % cols:
        return None
    per_row = base.columns // cols
    if count > per_row * (base.rows // rows):
        return None
    tiles = [
        _replace(
            base,
            tile=tile,
            rows=rows,
            columns=cols,
            stack_key=(("Mosaic", per_row), ("Rows", rows), ("Columns", cols), *base.stack_key),
            order_key=(*base.order_key, tile),
        )
        for tile in range(count)
    ]
    return tiles, per_row


def _mosaic_frames(ds: Dataset, index: int) -> list[Frame]:
    """Siemens mosaic: n slices tiled in a square grid in one image.

    The number of slices comes from (0019,100A) or the CSA header; without it, which tiles
    hold slices is unknown (dcm2niix guesses every tile of the grid), and the file's frames
    are marked ``mosaic_layout_unknown``.
    """
    count = _int(ds[_SIEMENS_MOSAIC_COUNT].value if _SIEMENS_MOSAIC_COUNT in ds else None, 0)
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
    except Exception:  # a broken private header just means: no count, no normal from it
        csa = None
    base = _classic_frames(ds, index)[0]
    size = f"{base.columns}x{base.rows}"
    if count < 1:
        return _unplaced(
            ds,
            index,
            "mosaic_layout_unknown",
            f"Siemens mosaic ({size} pixels) without the number of images it holds "
            "((0019,100A) NumberOfImagesInMosaic, or the CSA image header): which of its "
            "tiles hold slices is unknown",
        )
    grid = math.ceil(math.sqrt(count))
    cut = _mosaic_tiles(base, count, (base.rows // grid, base.columns // grid))
    if cut is None or base.rows % grid or base.columns % grid:
        return _unplaced(
            ds,
            index,
            "mosaic_layout_unknown",
            f"Siemens mosaic of {count} images in {size} pixels: not a {grid}x{grid} grid of "
            "whole tiles",
        )
    tiles, _ = cut
    if base.position is None or base.row_cosine is None:
        return tiles
    if base.column_cosine is None or base.pixel_spacing is None:
        return tiles
    row_cos, col_cos = np.array(base.row_cosine), np.array(base.column_cosine)
    if normal is None or np.linalg.norm(normal) < 1e-6:
        normal = np.cross(row_cos, col_cos)
    normal = normal / np.linalg.norm(normal)
    # The header's position is that of the whole mosaic; move it to the first tile.
    rows, cols = tiles[0].rows, tiles[0].columns
    row_spacing, col_spacing = base.pixel_spacing
    first = (
        np.array(base.position)
        + col_cos * row_spacing * (base.rows - rows) / 2
        + row_cos * col_spacing * (base.columns - cols) / 2
    )
    step = base.spacing_between_slices or base.slice_thickness or 1.0
    placed = []
    for tile in tiles:
        pos = first + (tile.tile or 0) * step * normal
        placed.append(_replace(tile, position=(float(pos[0]), float(pos[1]), float(pos[2]))))
    return placed


def _uih_tile_shapes(ds: Dataset) -> list[tuple[int, int]]:
    """Tile sizes a UIH VFRAME mosaic may have: its (0065,1004) text, its AcquisitionMatrix."""
    shapes: list[tuple[int, int]] = []
    text = str(ds[_UIH_TILE].value) if _UIH_TILE in ds else ""
    parts = [p.strip() for p in text.split("*")]
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        shapes += [(int(parts[0]), int(parts[1])), (int(parts[1]), int(parts[0]))]
    matrix = [_int(v) for v in attribute(ds, "AcquisitionMatrix") or []]
    if len(matrix) == 4:
        frequency = matrix[0] or matrix[1]
        phase = matrix[2] or matrix[3]
        shapes += [(frequency, phase), (phase, frequency)]
    return list(dict.fromkeys(s for s in shapes if s[0] > 0 and s[1] > 0))


def _uih_mosaic_frames(ds: Dataset, index: int) -> list[Frame]:
    """UIH VFRAME mosaic: slices tiled row by row, each with its own position in (0065,1051).

    The tile size must be the one of (0065,1004) or AcquisitionMatrix that divides the
    image into enough whole tiles; when none or several do, the layout is unknown.
    """
    items = list(ds[_UIH_SLICES].value or [])
    base = _classic_frames(ds, index)[0]
    count = len(items)
    found = [cut for shape in _uih_tile_shapes(ds) if (cut := _mosaic_tiles(base, count, shape))]
    layouts = {(cut[0][0].rows, cut[0][0].columns) for cut in found}
    if len(layouts) != 1:
        candidates = ", ".join(f"{r}x{c}" for r, c in _uih_tile_shapes(ds)) or "none given"
        return _unplaced(
            ds,
            index,
            "mosaic_layout_unknown",
            f"UIH mosaic (VFRAME) of {count} slices in {base.columns}x{base.rows} pixels: "
            f"no single tile size (candidates: {candidates}) cuts it into {count} whole tiles",
        )
    tiles, _ = found[0]
    placed = []
    for tile, item in zip(tiles, items, strict=True):
        position = _floats(item.get("ImagePositionPatient"), 3)
        if position is None:
            return _unplaced(
                ds,
                index,
                "mosaic_layout_unknown",
                f"UIH mosaic (VFRAME): slice {(tile.tile or 0) + 1} of {count} has no "
                "ImagePositionPatient in (0065,1051)",
            )
        placed.append(_replace(tile, position=position))
    return placed
