"""Resampling tilted and unevenly spaced stacks: the grid and the interpolated values."""

from __future__ import annotations

import numpy as np
import pytest

from shared.volumes.resample import plan_resampling, resample_stack


def test_tilted_slices_are_shifted_back_into_line() -> None:
    # One object (a ramp along the rows, 10 per row) seen by 4 slices that drift by
    # -1.25 rows each, as a tilted gantry's slices do; linear interpolation is exact on a
    # ramp, so every resampled slice must show the same ramp wherever it has data.
    rows, cols, drift = 8, 3, -1.25
    shifts = np.array([k * drift for k in range(4)])
    acquired = np.empty((1, 4, rows, cols), dtype=np.float32)
    for k, shift in enumerate(shifts):
        world_row = np.arange(rows) + shift  # where each acquired row lies on the object
        acquired[0, k] = (100 + 10 * world_row)[:, np.newaxis]
    plan, row_start, col_start = plan_resampling(
        ("gantry_tilt",), 14.0, shifts, np.zeros(4), np.arange(4) * 2.0, rows, cols, 2.0
    )
    assert (row_start, col_start) == (-4, 0)  # ceil(3.75) rows before the first slice
    assert (plan.rows, plan.columns, plan.slices) == (rows + 4, cols, 4)
    out = np.zeros((1, 4, plan.rows, plan.columns), dtype=np.float32)
    fill = resample_stack(acquired, plan, out)
    assert fill == pytest.approx(float(acquired.min()))
    expected = 100 + 10 * (np.arange(plan.rows) + row_start)
    for k in range(4):
        lo = plan.row_offsets[k]  # grid row of acquired row 0
        grid = np.arange(plan.rows)
        inside = (grid >= lo) & (grid <= lo + rows - 1)
        edge = (grid > lo - 1) & (grid < lo)  # less than a pixel before row 0: its value
        assert out[0, k, inside, 0] == pytest.approx(expected[inside])
        assert np.all(out[0, k, edge] == acquired[0, k, 0, 0])
        assert np.all(out[0, k, ~(inside | edge)] == fill)


def test_uneven_slices_are_interpolated_linearly_along_the_normal() -> None:
    depths = np.array([0.0, 2.0, 4.0, 8.0])  # one slice missing at 6 mm
    acquired = np.stack([np.full((2, 2), 10.0 * d) for d in depths])[np.newaxis].astype(np.int16)
    plan, _, _ = plan_resampling(
        ("inconsistent_spacing",), None, np.zeros(4), np.zeros(4), depths, 2, 2, None
    )
    assert plan.slices == 5
    assert plan.slice_spacing == pytest.approx(2.0)
    out = np.zeros((1, 5, 2, 2), dtype=np.int16)
    resample_stack(acquired, plan, out)
    assert [int(out[0, j, 0, 0]) for j in range(5)] == [0, 20, 40, 60, 80]


def test_integer_voxels_are_rounded_and_keep_their_type() -> None:
    depths = np.array([0.0, 1.0, 3.0])
    acquired = np.array([0, 1, 4], dtype=np.uint8).reshape(1, 3, 1, 1) * np.ones(
        (1, 3, 1, 1), dtype=np.uint8
    )
    plan, _, _ = plan_resampling(
        ("inconsistent_spacing",), None, np.zeros(3), np.zeros(3), depths, 1, 1, None
    )
    out = np.zeros((1, plan.slices, 1, 1), dtype=np.uint8)
    resample_stack(acquired, plan, out)
    assert out.dtype == np.uint8
    assert out[0, :, 0, 0].tolist() == [0, 1, 2, 4]  # 2.5 at 2 mm rounds to even


def test_timepoints_and_colour_are_resampled_alike() -> None:
    shifts = np.array([0.0, 0.5])
    acquired = np.arange(2 * 2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 2, 3, 2, 3)
    plan, _, _ = plan_resampling(
        ("gantry_tilt",), 5.0, shifts, np.zeros(2), np.array([0.0, 1.0]), 3, 2, 1.0
    )
    out = np.zeros((2, 2, plan.rows, plan.columns, 3), dtype=np.float32)
    resample_stack(acquired, plan, out)
    # Slice 0 sits on the grid: copied as it is, timepoint by timepoint, colour by colour.
    assert np.array_equal(out[:, 0, : acquired.shape[2]], acquired[:, 0])
    # Slice 1 is half a row off: each grid row is the mean of two acquired rows.
    assert out[1, 1, 1, 0] == pytest.approx((acquired[1, 1, 0, 0] + acquired[1, 1, 1, 0]) / 2)
