"""Stacks: which frames form one volume, in which order, and whether they may.

Frames are split into stacks by everything that must not be mixed in one volume (size,
orientation, pixel spacing, echo, image type, colour). Within a stack, frames are ordered
along the slice normal; frames sharing a position are timepoints of a 4-D volume.

A stack whose slices are parallel but drift in-plane as they advance (gantry tilt) or lie
at uneven distances is resampled onto a regular grid (:mod:`shared.volumes.resample`),
unless resampling is off: then it is refused, as is every stack whose geometry is not that
of a volume at all. Nothing is stacked silently:

==========================  ===================================================
code                        found
==========================  ===================================================
``no_geometry``             several frames without position or orientation
``not_a_volume``            several frames, all at one position
``too_few_slices``          fewer positions than ``min_slices``
``missing_timepoints``      positions holding different numbers of frames
``missing_slices``          a gap wider than two slice spacings (resampling on)
``gantry_tilt``             slices shifted in-plane as they advance (resampling off)
``inconsistent_spacing``    uneven distances between slices (resampling off)
``mosaic_layout_unknown``   (from the frames) a mosaic whose tiles are unknown
==========================  ===================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.dicom.metadata import Orientation
from shared.volumes.frames import Frame
from shared.volumes.resample import Resampling, plan_resampling

POSITION_TOLERANCE_MM = 0.01
"""Frames closer than this along the normal share a position (they are timepoints)."""
SPACING_TOLERANCE = 0.05
"""Largest accepted deviation of one slice gap from the median gap, as a fraction."""
SPACING_TOLERANCE_MM = 0.02
TILT_TOLERANCE_PIXELS = 0.1
"""Largest in-plane drift of a slice, in pixels, before a stack counts as tilted."""
ORIENTATION_TOLERANCE = 1e-3
MAX_GAP_SLICES = 2.0
"""Largest gap, in resampled slice spacings, interpolated across: one missing slice."""


@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str


@dataclass
class StackPlan:
    """A stack that forms a volume: frames as ``[timepoint][slice]`` plus its geometry."""

    frames: list[list[Frame]]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]  # columns, rows, slices (mm)
    direction: tuple[float, ...]  # 3x3 row-major; columns are row, column, slice directions
    notes: list[str] = field(default_factory=list)
    resampling: Resampling | None = None
    """How the acquired frames map onto the volume's grid; None when they are the grid."""

    @property
    def slice_count(self) -> int:
        return self.resampling.slices if self.resampling else len(self.frames[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels along columns, rows and slices."""
        if self.resampling:
            return (self.resampling.columns, self.resampling.rows, self.resampling.slices)
        first = self.frames[0][0]
        return (first.columns, first.rows, len(self.frames[0]))

    @property
    def timepoint_count(self) -> int:
        return len(self.frames)


def median(values: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    """``float(np.median(values))``, the same value, NaN if one is NaN or none is given.

    Not ``np.median`` itself: on floats it checks for NaN through ``numpy.ma``, which it
    imports at first use, 4-5 ms of every ``seriesflow process``."""
    if values.size == 0 or bool(np.isnan(values).any()):
        return math.nan
    ordered = np.sort(values, axis=None)
    middle = ordered.size // 2
    if ordered.size % 2:
        return float(ordered[middle])
    return (float(ordered[middle - 1]) + float(ordered[middle])) / 2


def orientation_label(direction: Sequence[float]) -> Orientation:
    """AXIAL, CORONAL or SAGITTAL when the slice normal is within ~8 degrees of an axis."""
    normal = np.array([direction[2], direction[5], direction[8]])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < math.cos(math.radians(8)):
        return "OBLIQUE"
    labels: tuple[Orientation, Orientation, Orientation] = ("SAGITTAL", "CORONAL", "AXIAL")
    return labels[axis]


def split_stacks(frames: Sequence[Frame]) -> list[list[Frame]]:
    """Group frames that may share a volume, in order of first appearance."""
    groups: list[tuple[tuple[Any, ...], list[Frame]]] = []
    for frame in frames:
        key = _stack_identity(frame)
        for existing_key, members in groups:
            if _same_stack(existing_key, key):
                members.append(frame)
                break
        else:
            groups.append((key, [frame]))
    return [members for _, members in groups]


def _stack_identity(frame: Frame) -> tuple[Any, ...]:
    orientation = (
        None if frame.row_cosine is None else (*frame.row_cosine, *(frame.column_cosine or ()))
    )
    spacing = None if frame.pixel_spacing is None else tuple(frame.pixel_spacing)
    return ((frame.rows, frame.columns, frame.stack_key), orientation, spacing)


def _same_stack(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if a[0] != b[0]:
        return False
    for x, y, tol in ((a[1], b[1], ORIENTATION_TOLERANCE), (a[2], b[2], 1e-4)):
        if (x is None) != (y is None):
            return False
        if x is not None and max(abs(p - q) for p, q in zip(x, y, strict=True)) > tol * max(
            1.0, *(abs(v) for v in x)
        ):
            return False
    return True


def plan_stack(
    frames: Sequence[Frame], min_slices: int = 3, resample: bool = True
) -> StackPlan | Refusal:
    """Order a stack's frames into a volume, or say why they do not form one."""
    unusable = next((f.refusal for f in frames if f.refusal is not None), None)
    if unusable is not None:
        return Refusal(*unusable)
    if len(frames) == 1:
        return _single_frame_plan(frames[0])
    geometric = [
        f for f in frames if f.position and f.row_cosine and f.column_cosine and f.pixel_spacing
    ]
    if len(geometric) != len(frames):
        return Refusal(
            "no_geometry",
            f"{len(frames) - len(geometric)} of {len(frames)} images have no position, "
            "orientation or pixel spacing, so their order in space is unknown",
        )
    first = frames[0]
    row = np.array(first.row_cosine)
    col = np.array(first.column_cosine)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([f.position for f in frames], dtype=float)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and distance[i] - distance[groups[-1][0]] <= POSITION_TOLERANCE_MM:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    if len(groups) == 1:
        return Refusal(
            "not_a_volume", f"all {len(frames)} images lie at one position: not a volume"
        )
    counts = {len(g) for g in groups}
    if len(counts) > 1:
        return Refusal(
            "missing_timepoints",
            f"positions hold between {min(counts)} and {max(counts)} images: "
            "images are missing from some timepoints",
        )
    if len(groups) < min_slices:
        return Refusal(
            "too_few_slices",
            f"{len(groups)} slices, fewer than the {min_slices} a volume needs",
        )
    assert first.pixel_spacing is not None
    geometry = _StackGeometry(positions[[g[0] for g in groups]], row, col, normal, first)
    problems = geometry.problems()
    # Frames sharing a position are timepoints, ordered by their temporal key.
    by_time = [sorted((frames[i] for i in g), key=lambda f: f.order_key) for g in groups]
    ordered = [[by_time[z][t] for z in range(len(groups))] for t in range(len(groups[0]))]
    direction = _direction(row, col, normal)
    if not problems:
        origin = ordered[0][0].position
        assert origin is not None
        return StackPlan(
            frames=ordered,
            origin=origin,
            spacing=(first.pixel_spacing[1], first.pixel_spacing[0], geometry.median_gap),
            direction=direction,
        )
    if not resample:
        return Refusal(problems[0][0], "; ".join(text for _, text in problems))
    missing = geometry.missing_slices()
    if missing is not None:
        return Refusal("missing_slices", missing)
    zeros = np.zeros(len(groups))
    resampling, row_start, col_start = plan_resampling(
        reasons=tuple(code for code, _ in problems),
        tilt_degrees=geometry.tilt_degrees() if geometry.tilted else None,
        row_shift=geometry.row_shift if geometry.tilted else zeros,
        column_shift=geometry.column_shift if geometry.tilted else zeros,
        depths=geometry.depths,
        rows=first.rows,
        columns=first.columns,
        even_spacing=None if geometry.uneven else geometry.median_gap,
    )
    corner = (
        geometry.positions[0]
        + row * col_start * first.pixel_spacing[1]
        + col * row_start * first.pixel_spacing[0]
    )
    return StackPlan(
        frames=ordered,
        origin=(float(corner[0]), float(corner[1]), float(corner[2])),
        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], resampling.slice_spacing),
        direction=direction,
        notes=[resampling.describe()],
        resampling=resampling,
    )


class _StackGeometry:
    """Where a stack's slices lie: along the normal and in-plane, relative to the first."""

    def __init__(
        self,
        positions: np.ndarray[Any, np.dtype[np.float64]],
        row: np.ndarray[Any, np.dtype[np.float64]],
        col: np.ndarray[Any, np.dtype[np.float64]],
        normal: np.ndarray[Any, np.dtype[np.float64]],
        first: Frame,
    ) -> None:
        assert first.pixel_spacing is not None
        self.positions = positions
        offsets = positions - positions[0]
        self.depths = offsets @ normal
        in_plane = offsets - np.outer(self.depths, normal)
        self.drift = np.linalg.norm(in_plane, axis=1)
        row_spacing, col_spacing = first.pixel_spacing
        self.row_shift = (offsets @ col) / row_spacing  # in rows
        self.column_shift = (offsets @ row) / col_spacing  # in columns
        self.tilted = float(self.drift.max()) > TILT_TOLERANCE_PIXELS * min(first.pixel_spacing)
        self.gaps = np.diff(self.depths)
        self.median_gap = median(self.gaps)
        worst = float(np.max(np.abs(self.gaps - self.median_gap)))
        self.uneven = worst > max(SPACING_TOLERANCE * self.median_gap, SPACING_TOLERANCE_MM)
        # Along an axis where the slices drift less than the tilt tolerance, none is shifted.
        for shift in (self.row_shift, self.column_shift):
            if float(np.max(np.abs(shift))) <= TILT_TOLERANCE_PIXELS:
                shift[:] = 0.0

    def tilt_degrees(self) -> float:
        along = float(abs(self.depths[-1]))
        return math.degrees(math.atan2(float(self.drift[-1]), along)) if along > 0 else 90.0

    def problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.tilted:
            problems.append(
                (
                    "gantry_tilt",
                    f"slices shift {self.drift.max():.2f} mm in-plane as they advance: gantry "
                    f"tilt of about {self.tilt_degrees():.1f} degrees",
                )
            )
        if self.uneven:
            problems.append(
                (
                    "inconsistent_spacing",
                    f"slice gaps range from {self.gaps.min():.3f} to {self.gaps.max():.3f} mm "
                    f"around a median of {self.median_gap:.3f} mm: slices are missing or "
                    "unevenly spaced",
                )
            )
        return problems

    def missing_slices(self) -> str | None:
        """Why the gaps are too wide to interpolate across, or None."""
        if not self.uneven:
            return None
        extent = float(self.depths[-1])
        spacing = extent / round(extent / float(self.gaps.min()))
        widest = float(self.gaps.max())
        if widest <= MAX_GAP_SLICES * spacing * (1 + SPACING_TOLERANCE):
            return None
        return (
            f"a gap of {widest:.3f} mm between slices {spacing:.3f} mm apart: about "
            f"{round(widest / spacing) - 1} slices are missing, more than resampling fills in "
            f"(one slice at most)"
        )


def _direction(
    row: np.ndarray[Any, np.dtype[np.float64]],
    col: np.ndarray[Any, np.dtype[np.float64]],
    normal: np.ndarray[Any, np.dtype[np.float64]],
) -> tuple[float, ...]:
    matrix = np.column_stack([row, col, normal])
    return tuple(float(v) for v in matrix.ravel())


def _single_frame_plan(frame: Frame) -> StackPlan:
    notes = []
    if frame.row_cosine and frame.column_cosine:
        row, col = np.array(frame.row_cosine), np.array(frame.column_cosine)
        normal = np.cross(row, col)
        normal /= np.linalg.norm(normal)
        direction = _direction(row, col, normal)
    else:
        direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        notes.append("no image orientation: identity direction written")
    if frame.position is None:
        notes.append("no image position: origin 0,0,0 written")
    spacing = frame.pixel_spacing
    if spacing is None:
        notes.append("no pixel spacing: 1 mm written")
        spacing = (1.0, 1.0)
    depth = frame.spacing_between_slices or frame.slice_thickness or 1.0
    return StackPlan(
        frames=[[frame]],
        origin=frame.position or (0.0, 0.0, 0.0),
        spacing=(spacing[1], spacing[0], depth),
        direction=direction,
        notes=notes,
    )
