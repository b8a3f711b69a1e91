"""Stacking logic on synthetic frames: ordering, geometry, and every refusal."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.volumes.frames import Frame
from shared.volumes.stacks import (
    Refusal,
    StackPlan,
    median,
    orientation_label,
    plan_stack,
    split_stacks,
)

REPO = Path(__file__).resolve().parents[2]
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def frame(
    z: float,
    *,
    index: int = 0,
    xy: tuple[float, float] = (0.0, 0.0),
    orientation: tuple[tuple[float, float, float], tuple[float, float, float]] = AXIAL,
    time: int = 0,
    key: tuple[tuple[str, object], ...] = (),
    rows: int = 4,
) -> Frame:
    row, col = orientation
    normal = np.cross(row, col)
    pos = np.array([xy[0], xy[1], 0.0]) + z * normal
    return Frame(
        instance=index,
        frame=0,
        tile=None,
        rows=rows,
        columns=4,
        position=(float(pos[0]), float(pos[1]), float(pos[2])),
        row_cosine=row,
        column_cosine=col,
        pixel_spacing=(0.5, 0.7),
        slice_thickness=2.0,
        spacing_between_slices=None,
        slope=1.0,
        intercept=0.0,
        stack_key=key,
        order_key=(time, index),
        stack_attributes=key,
    )


def plan(frames: list[Frame], min_slices: int = 2, resample: bool = True) -> StackPlan:
    result = plan_stack(frames, min_slices, resample)
    assert isinstance(result, StackPlan), result
    return result


def refusal(frames: list[Frame], min_slices: int = 2, resample: bool = True) -> Refusal:
    result = plan_stack(frames, min_slices, resample)
    assert isinstance(result, Refusal), result
    return result


def test_slices_are_ordered_along_the_normal_whatever_the_file_order() -> None:
    frames = [frame(2.0 * i, index=i) for i in range(10)]
    shuffled = frames[:]
    random.Random(4).shuffle(shuffled)
    result = plan(shuffled)
    assert [f.instance for f in result.frames[0]] == list(range(10))
    assert result.origin == frames[0].position
    assert result.spacing == pytest.approx((0.7, 0.5, 2.0))
    assert result.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_oblique_geometry_uses_the_cross_product_as_slice_direction() -> None:
    c, s = math.cos(0.3), math.sin(0.3)
    oblique = ((c, s, 0.0), (0.0, 0.0, -1.0))  # a rotated coronal plane
    frames = [frame(1.5 * i, index=i, orientation=oblique) for i in range(5)]
    result = plan(list(reversed(frames)))
    normal = np.cross(oblique[0], oblique[1])
    assert np.array(result.direction).reshape(3, 3)[:, 2] == pytest.approx(normal)
    assert result.spacing[2] == pytest.approx(1.5)
    assert result.origin == pytest.approx(frames[0].position)


def test_repeated_positions_become_timepoints_in_temporal_order() -> None:
    frames = [frame(3.0 * z, index=10 * t + z, time=t) for t in range(4) for z in range(5)]
    random.Random(1).shuffle(frames)
    result = plan(frames)
    assert (result.timepoint_count, result.slice_count) == (4, 5)
    for t, row in enumerate(result.frames):
        assert [f.instance for f in row] == [10 * t + z for z in range(5)]


def test_a_gap_in_slice_positions_is_refused_when_resampling_is_off() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 5.0, 10.0, 20.0, 25.0])]
    result = refusal(frames, resample=False)
    assert result.code == "inconsistent_spacing"
    assert "10.000" in result.reason and "5.000" in result.reason


def test_one_missing_slice_is_resampled_onto_even_slices() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 5.0, 10.0, 20.0, 25.0])]
    result = plan(frames)
    assert result.resampling is not None
    assert result.resampling.reasons == ("inconsistent_spacing",)
    assert result.resampling.tilt_degrees is None
    assert result.shape == (4, 4, 6)
    assert result.spacing == pytest.approx((0.7, 0.5, 5.0))
    assert result.origin == pytest.approx(frames[0].position)
    assert [f.instance for f in result.frames[0]] == [0, 1, 2, 3, 4]  # as acquired
    assert any("resampled" in note for note in result.notes)


def test_uneven_spacing_uses_the_smallest_gap_and_reaches_the_last_slice() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 2.5, 5.0, 10.0, 15.0])]
    result = plan(frames)
    assert result.resampling is not None
    assert result.slice_count == 7
    assert result.spacing[2] == pytest.approx(2.5)


def test_several_missing_slices_in_a_row_are_refused() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 5.0, 10.0, 30.0, 35.0])]
    result = refusal(frames)
    assert result.code == "missing_slices"
    assert "20.000 mm" in result.reason and "3 slices are missing" in result.reason


def test_jitter_below_tolerance_is_accepted() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 2.001, 3.999, 6.0, 8.002])]
    assert plan(frames).spacing[2] == pytest.approx(2.0, abs=0.01)


def test_gantry_tilt_is_refused_with_its_angle_when_resampling_is_off() -> None:
    tilt = math.radians(15)
    frames = [frame(5.0 * i, index=i, xy=(0.0, 5.0 * i * math.tan(tilt))) for i in range(6)]
    result = refusal(frames, resample=False)
    assert result.code == "gantry_tilt"
    assert "15.0 degrees" in result.reason


def test_gantry_tilt_is_resampled_onto_the_acquired_planes() -> None:
    # Table positions advance along z; the planes are tilted by 15 degrees about x.
    tilt = math.radians(15)
    plane = ((1.0, 0.0, 0.0), (0.0, math.cos(tilt), -math.sin(tilt)))
    normal = np.cross(*plane)
    frames = []
    for i in range(6):
        position = np.array([0.0, 0.0, 5.0 * i])
        offset = position - (position @ normal) * normal  # what frame() must add in-plane
        f = frame(float(position @ normal), index=i, orientation=plane)
        frames.append(replace(f, position=(0.0, 0.0, 5.0 * i)))
        assert np.allclose(np.array(f.position) + offset, position)
    result = plan(list(reversed(frames)))
    grid = result.resampling
    assert grid is not None and grid.reasons == ("gantry_tilt",)
    assert grid.tilt_degrees == pytest.approx(15.0)
    assert not grid.resample_depth
    # Planes 5 cos(15) mm apart, along the tilted normal; rows cover every slice's drift.
    assert result.spacing == pytest.approx((0.7, 0.5, 5.0 * math.cos(tilt)))
    assert np.array(result.direction).reshape(3, 3)[:, 2] == pytest.approx(normal)
    drift_rows = 5 * 5.0 * math.sin(tilt) / 0.5  # 12.9 rows of drift over five gaps
    assert result.shape == (4, 4 + math.ceil(drift_rows), 6)
    # Rows run along +column direction; the slices drift towards -column, so the grid
    # starts ceil(drift) rows before the first slice.
    expected_origin = np.array(frames[0].position) - math.ceil(drift_rows) * 0.5 * np.array(
        plane[1]
    )
    assert result.origin == pytest.approx(tuple(expected_origin))
    assert grid.row_offsets[0] == pytest.approx(math.ceil(drift_rows))
    assert grid.row_offsets[-1] == pytest.approx(math.ceil(drift_rows) - drift_rows)
    assert grid.column_offsets == pytest.approx((0.0,) * 6)


def test_one_position_is_not_a_volume() -> None:
    result = refusal([frame(0.0, index=i, time=i) for i in range(4)])
    assert result.code == "not_a_volume"


def test_two_slices_are_a_volume_by_default_and_the_minimum_is_configurable() -> None:
    frames = [frame(0.0, index=0), frame(1.0, index=1)]
    assert plan(frames).slice_count == 2
    assert refusal(frames, min_slices=3).code == "too_few_slices"


def test_a_frame_that_cannot_be_placed_refuses_its_stack() -> None:
    why = ("mosaic_layout_unknown", "which tiles hold slices is unknown")
    frames = [frame(0.0, index=0), replace(frame(1.0, index=1), refusal=why)]
    result = refusal(frames)
    assert (result.code, result.reason) == why
    assert refusal([replace(frame(0.0), refusal=why)]).code == "mosaic_layout_unknown"


def test_a_single_image_is_a_one_slice_volume() -> None:
    result = plan([frame(7.0)])
    assert result.slice_count == 1
    assert result.spacing[2] == 2.0  # the slice thickness


def test_single_image_without_geometry_gets_identity_and_says_so() -> None:
    bare = replace(frame(0.0), position=None, row_cosine=None, column_cosine=None)
    result = plan([bare])
    assert result.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert any("identity" in note for note in result.notes)


def test_frames_without_geometry_are_refused_when_there_are_several() -> None:
    frames = [replace(frame(float(i), index=i), position=None) for i in range(4)]
    assert refusal(frames).code == "no_geometry"


def test_missing_timepoints_are_refused() -> None:
    frames = [frame(2.0 * z, index=10 * t + z, time=t) for t in range(3) for z in range(4)]
    assert refusal(frames[:-1]).code == "missing_timepoints"


def test_stacks_split_by_orientation_size_and_key() -> None:
    sagittal = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
    axial = [frame(float(i), index=i) for i in range(3)]
    sag = [frame(float(i), index=10 + i, orientation=sagittal) for i in range(3)]
    echo2 = [frame(float(i), index=20 + i, key=(("EchoNumbers", 2),)) for i in range(3)]
    small = [frame(float(i), index=30 + i, rows=2) for i in range(3)]
    mixed = [f for group in zip(axial, sag, echo2, small, strict=True) for f in group]
    stacks = split_stacks(mixed)
    assert [[f.instance for f in s] for s in stacks] == [
        [0, 1, 2],
        [10, 11, 12],
        [20, 21, 22],
        [30, 31, 32],
    ]


def test_orientation_noise_does_not_split_a_stack() -> None:
    noisy = ((1.0, 1e-5, 0.0), (0.0, 1.0, 2e-5))
    frames = [frame(0.0, index=0), frame(1.0, index=1, orientation=noisy)]
    assert len(split_stacks(frames)) == 1


@pytest.mark.parametrize(
    ("direction", "label"),
    [
        ((1, 0, 0, 0, 1, 0, 0, 0, 1), "AXIAL"),
        ((1, 0, 0, 0, 0, 1, 0, -1, 0), "CORONAL"),
        ((0, 0, 1, 1, 0, 0, 0, 1, 0), "SAGITTAL"),
        ((1, 0, 0, 0, 0.7071, 0.7071, 0, -0.7071, 0.7071), "OBLIQUE"),
    ],
)
def test_orientation_label(direction: tuple[float, ...], label: str) -> None:
    assert orientation_label(direction) == label


@pytest.mark.parametrize(
    "values",
    [
        [],
        [2.5],
        [3.0, 1.0],
        [1.0, 3.0, 2.0],
        [0.1, 0.2, 0.30000000000000004, 0.4],
        [1e300, 1e300, -1e300, 5.0],
        [float("inf"), 1.0, 2.0],
        [float("inf"), float("-inf")],
        [1.0, float("nan"), 2.0],
        [-0.0, 0.0],
    ],
)
def test_median_is_numpys(values: list[float]) -> None:
    got = median(np.array(values, dtype=np.float64))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = float(np.median(np.array(values, dtype=np.float64)))
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_median_of_random_gaps_is_numpys() -> None:
    rng = np.random.default_rng(7)
    for size in (2, 3, 299, 300):
        values = rng.normal(1.25, 0.01, size)
        assert median(values) == float(np.median(values))


def test_planning_a_stack_does_not_import_numpy_ma() -> None:
    """np.median imports numpy.ma (5 ms of every start); the plan's median does not."""
    probe = (
        "import sys\n"
        "from tests.unit.test_stacks import frame\n"
        "from shared.volumes.stacks import plan_stack\n"
        "assert 'numpy.ma' not in sys.modules\n"
        "plan = plan_stack([frame(z) for z in (0.0, 1.0, 2.0, 3.5)])\n"
        "print(type(plan).__name__, 'numpy.ma' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().endswith("False"), done.stdout + done.stderr
