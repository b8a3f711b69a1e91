"""Stacking logic on synthetic frames: ordering, geometry, and every refusal."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest

from shared.volumes.frames import Frame
from shared.volumes.stacks import Refusal, StackPlan, orientation_label, plan_stack, split_stacks

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


def plan(frames: list[Frame], min_slices: int = 3) -> StackPlan:
    result = plan_stack(frames, min_slices)
    assert isinstance(result, StackPlan), result
    return result


def refusal(frames: list[Frame], min_slices: int = 3) -> Refusal:
    result = plan_stack(frames, min_slices)
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


def test_a_gap_in_slice_positions_is_refused() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 5.0, 10.0, 20.0, 25.0])]
    result = refusal(frames)
    assert result.code == "inconsistent_spacing"
    assert "10.000" in result.reason and "5.000" in result.reason


def test_jitter_below_tolerance_is_accepted() -> None:
    frames = [frame(z, index=i) for i, z in enumerate([0.0, 2.001, 3.999, 6.0, 8.002])]
    assert plan(frames).spacing[2] == pytest.approx(2.0, abs=0.01)


def test_gantry_tilt_is_refused_with_its_angle() -> None:
    tilt = math.radians(15)
    frames = [frame(5.0 * i, index=i, xy=(0.0, 5.0 * i * math.tan(tilt))) for i in range(6)]
    result = refusal(frames)
    assert result.code == "gantry_tilt"
    assert "15.0 degrees" in result.reason


def test_one_position_is_not_a_volume() -> None:
    result = refusal([frame(0.0, index=i, time=i) for i in range(4)])
    assert result.code == "not_a_volume"


def test_too_few_slices_is_refused_and_the_minimum_is_configurable() -> None:
    frames = [frame(0.0, index=0), frame(1.0, index=1)]
    assert refusal(frames).code == "too_few_slices"
    assert plan(frames, min_slices=2).slice_count == 2


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
