"""Stacks: which frames form one volume, in which order, and whether they may.

Frames are split into stacks by everything that must not be mixed in one volume (size,
orientation, pixel spacing, echo, image type, colour). Within a stack, frames are ordered
along the slice normal; frames sharing a position are timepoints of a 4-D volume. A stack
is refused, never silently stacked, when its geometry is not that of a regular volume:

==========================  ===================================================
code                        found
==========================  ===================================================
``no_geometry``             several frames without position or orientation
``not_a_volume``            several frames, all at one position
``too_few_slices``          fewer positions than ``min_slices``
``missing_timepoints``      positions holding different numbers of frames
``gantry_tilt``             slices shifted in-plane as they advance (tilted gantry)
``inconsistent_spacing``    uneven distances between slices (missing slices)
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

POSITION_TOLERANCE_MM = 0.01
"""Frames closer than this along the normal share a position (they are timepoints)."""
SPACING_TOLERANCE = 0.05
"""Largest accepted deviation of one slice gap from the median gap, as a fraction."""
SPACING_TOLERANCE_MM = 0.02
TILT_TOLERANCE_PIXELS = 0.1
"""Largest in-plane drift of a slice, in pixels, before a stack counts as tilted."""
ORIENTATION_TOLERANCE = 1e-3


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

    @property
    def slice_count(self) -> int:
        return len(self.frames[0])

    @property
    def timepoint_count(self) -> int:
        return len(self.frames)


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


def plan_stack(frames: Sequence[Frame], min_slices: int = 3) -> StackPlan | Refusal:
    """Order a stack's frames into a volume, or say why they do not form one."""
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
    centres = np.array([distance[g[0]] for g in groups])
    problems = []
    tilt = _tilt(positions[[g[0] for g in groups]], normal, row, col, first)
    if tilt is not None:
        problems.append(("gantry_tilt", tilt))
    gaps = np.diff(centres)
    median_gap = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - median_gap)))
    if worst > max(SPACING_TOLERANCE * median_gap, SPACING_TOLERANCE_MM):
        problems.append(
            (
                "inconsistent_spacing",
                f"slice gaps range from {gaps.min():.3f} to {gaps.max():.3f} mm around a "
                f"median of {median_gap:.3f} mm: slices are missing or unevenly spaced",
            )
        )
    if problems:
        return Refusal(problems[0][0], "; ".join(text for _, text in problems))
    # Frames sharing a position are timepoints, ordered by their temporal key.
    by_time = [sorted((frames[i] for i in g), key=lambda f: f.order_key) for g in groups]
    ordered = [[by_time[z][t] for z in range(len(groups))] for t in range(len(groups[0]))]
    origin = ordered[0][0].position
    assert origin is not None and first.pixel_spacing is not None
    return StackPlan(
        frames=ordered,
        origin=origin,
        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], median_gap),
        direction=_direction(row, col, normal),
    )


def _tilt(
    positions: np.ndarray[Any, np.dtype[np.float64]],
    normal: np.ndarray[Any, np.dtype[np.float64]],
    row: np.ndarray[Any, np.dtype[np.float64]],
    col: np.ndarray[Any, np.dtype[np.float64]],
    first: Frame,
) -> str | None:
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(in_plane, axis=1)
    assert first.pixel_spacing is not None
    if float(drift.max()) <= TILT_TOLERANCE_PIXELS * min(first.pixel_spacing):
        return None
    along = float(np.abs(offsets[-1] @ normal))
    angle = math.degrees(math.atan2(float(drift[-1]), along)) if along > 0 else 90.0
    return (
        f"slices shift {drift.max():.2f} mm in-plane as they advance: gantry tilt of about "
        f"{angle:.1f} degrees"
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
