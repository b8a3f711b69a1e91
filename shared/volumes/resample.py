"""Resampling a tilted or unevenly spaced stack onto a regular grid.

A stack is *tilted* (gantry tilt) when its slices are parallel planes whose positions drift
in-plane as they advance, so that stacking them would shear the volume; it is *unevenly
spaced* when the distances between its planes differ (a missing slice, or a change of
slice spacing part-way). Either way its voxels do not lie on a grid that an image file can
describe, and they are resampled onto one:

* **Grid.** The acquired row, column and slice-normal directions (``cross(row, column)``)
  and pixel spacing are kept. The in-plane grid is that of the first slice, widened by
  whole pixels on the side the others drift to, so that every acquired pixel is covered
  (what dcm2niix does for ``_Tilt_1``). Along the normal, an evenly spaced stack keeps one
  grid slice per acquired slice; an unevenly spaced one gets slices from the first plane
  to the last, ``round(extent / smallest gap) + 1`` of them, evenly spaced (dcm2niix's
  ``_Eq`` uses the smallest gap too, but may stop short of the last plane).
* **Interpolation.** Linear: each grid voxel is interpolated bilinearly within the two
  nearest acquired planes (at the point where the normal through the voxel meets them)
  and linearly between them. This is trilinear interpolation in the acquired (sheared,
  unevenly spaced) index space. A grid point that falls up to one pixel before a plane's
  first row (or column) takes that edge pixel's value, as does one on its last row; beyond
  that, the voxel gets the fill value, the smallest value in the stack. These edge rules
  and the fill value are dcm2niix's, so that the voxels agree with its ``_Tilt_1`` output.
  Integer voxels are rounded to the nearest integer and keep their type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, np.dtype[Any]]

_WHOLE = 1e-3
"""Offsets within this many pixels of a whole number count as whole."""


@dataclass(frozen=True)
class Resampling:
    """How an acquired stack maps onto the grid it is resampled to.

    Acquired slice ``k``'s pixel (row ``r``, column ``c``) lies at grid row
    ``r + row_offsets[k]``, grid column ``c + column_offsets[k]``, and at ``depths[k]`` mm
    along the normal from the grid's first slice. Grid slice ``j`` lies at ``j *
    slice_spacing`` mm.
    """

    reasons: tuple[str, ...]
    """``gantry_tilt`` and/or ``inconsistent_spacing``."""
    tilt_degrees: float | None
    row_offsets: tuple[float, ...]
    column_offsets: tuple[float, ...]
    depths: tuple[float, ...]
    rows: int
    columns: int
    slices: int
    slice_spacing: float
    resample_depth: bool
    """False when the acquired planes are evenly spaced: grid slice k is acquired slice k."""

    def describe(self) -> str:
        parts = []
        if self.tilt_degrees is not None:
            drift = max(
                max(abs(v) for v in self.row_offsets), max(abs(v) for v in self.column_offsets)
            )
            parts.append(
                f"gantry tilt of {self.tilt_degrees:.1f} degrees removed (slices shifted "
                f"in-plane by up to {drift:.1f} pixels)"
            )
        if self.resample_depth:
            parts.append(
                f"{len(self.depths)} unevenly spaced slices resampled to {self.slices} "
                f"slices {self.slice_spacing:.4g} mm apart"
            )
        return (
            "resampled onto a regular grid, linear interpolation: "
            + "; ".join(parts)
            + f" ({self.columns}x{self.rows}x{self.slices})"
        )


def plan_resampling(
    reasons: tuple[str, ...],
    tilt_degrees: float | None,
    row_shift: Array,
    column_shift: Array,
    depths: Array,
    rows: int,
    columns: int,
    even_spacing: float | None,
) -> tuple[Resampling, int, int]:
    """The grid for an acquired stack; also the grid's first row and column in slice 0's
    pixel indices (negative when the grid starts before it).

    ``row_shift`` / ``column_shift``: each acquired slice's in-plane position relative to the
    first, in pixels; ``depths``: its distance from the first along the normal, mm.
    ``even_spacing``: the spacing when the planes are evenly spaced, else None.
    """
    row_start, row_end = _span(row_shift)
    col_start, col_end = _span(column_shift)
    if even_spacing is not None:
        slices, spacing, resample_depth = len(depths), even_spacing, False
    else:
        smallest = float(np.min(np.diff(depths)))
        extent = float(depths[-1] - depths[0])
        slices = round(extent / smallest) + 1
        spacing = extent / (slices - 1)
        resample_depth = True
    plan = Resampling(
        reasons=reasons,
        tilt_degrees=tilt_degrees,
        row_offsets=tuple(float(v) - row_start for v in row_shift),
        column_offsets=tuple(float(v) - col_start for v in column_shift),
        depths=tuple(float(v - depths[0]) for v in depths),
        rows=rows + row_end - row_start,
        columns=columns + col_end - col_start,
        slices=slices,
        slice_spacing=spacing,
        resample_depth=resample_depth,
    )
    return plan, row_start, col_start


def _span(shift: Array) -> tuple[int, int]:
    """Whole pixels the grid needs before and after slice 0's pixels for these shifts."""
    lo = math.floor(float(np.min(shift)) + _WHOLE)
    hi = math.ceil(float(np.max(shift)) - _WHOLE)
    return min(lo, 0), max(hi, 0)


def _shift_axis(image: Array, start: float, length: int, axis: int) -> tuple[Array, Array]:
    """``image`` sampled along ``axis`` at ``start, start + 1, ...`` (``length`` points),
    linearly; returns the samples (float64) and which of them lie on the image."""
    size = image.shape[axis]
    points = start + np.arange(length, dtype=np.float64)
    inside = (points > -1.0) & (points <= size - 1 + _WHOLE)
    clamped = np.clip(points, 0.0, size - 1)
    lower = np.minimum(np.floor(clamped).astype(np.intp), size - 1)
    upper = np.minimum(lower + 1, size - 1)
    weight = clamped - lower
    shape = [1] * image.ndim
    shape[axis] = length
    weight = weight.reshape(shape)
    a = np.take(image, lower, axis=axis).astype(np.float64)
    if not np.any(weight):
        return a, inside
    b = np.take(image, upper, axis=axis).astype(np.float64)
    return a + (b - a) * weight, inside


def _aligned(plane: Array, plan: Resampling, k: int, fill: float) -> Array:
    """Acquired plane ``k`` (rows, columns[, samples]) on the grid's in-plane pixels."""
    rows, inside_rows = _shift_axis(plane, -plan.row_offsets[k], plan.rows, 0)
    both, inside_cols = _shift_axis(rows, -plan.column_offsets[k], plan.columns, 1)
    outside = ~(inside_rows[:, np.newaxis] & inside_cols[np.newaxis, :])
    both[outside] = fill
    return both


def resample_stack(acquired: Array, plan: Resampling, out: Array) -> float:
    """Resample ``acquired`` ``(t, z, rows, columns[, samples])`` into ``out`` ``(t, slices,
    plan.rows, plan.columns[, samples])`` (see the module docstring for the rules); returns
    the fill value."""
    fill = float(acquired.min()) if acquired.size else 0.0
    integral = out.dtype.kind in "iu"
    info = np.iinfo(out.dtype) if integral else None
    depths = np.array(plan.depths)
    for t in range(acquired.shape[0]):
        cache: dict[int, Array] = {}

        def plane(k: int, t: int = t, cache: dict[int, Array] = cache) -> Array:
            if k not in cache:
                for old in [key for key in cache if key < k - 1]:
                    del cache[old]
                cache[k] = _aligned(acquired[t, k], plan, k, fill)
            return cache[k]

        for j in range(plan.slices):
            if not plan.resample_depth:
                value = plane(j)
            else:
                depth = j * plan.slice_spacing
                upper = int(np.searchsorted(depths, depth - 1e-6))
                upper = min(max(upper, 1), len(depths) - 1)
                lower = upper - 1
                weight = (depth - depths[lower]) / (depths[upper] - depths[lower])
                weight = min(max(weight, 0.0), 1.0)
                if weight <= 1e-6:
                    value = plane(lower)
                elif weight >= 1 - 1e-6:
                    value = plane(upper)
                else:
                    value = plane(lower) * (1 - weight) + plane(upper) * weight
            if integral and info is not None:
                value = np.clip(np.rint(value), info.min, info.max)
            out[t, j] = value
    return fill
