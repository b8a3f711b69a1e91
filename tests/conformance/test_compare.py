"""The comparison itself, on synthetic NIfTI files: it must see every kind of difference.

These need no test data, so they always run; they keep ``compare.py`` honest, since a
comparison that cannot fail would make every conformance test pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk

from .compare import AFFINE_ATOL, compare_nifti, load_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
Nifti1Image: Any = nib.Nifti1Image  # nibabel's constructor is untyped


def _affine() -> npt.NDArray[np.float64]:
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-100.0, -120.0, 30.0]
    return affine


def _save(path: Path, data: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> Path:
    nib.save(Nifti1Image(data, affine), str(path))
    return path


def _volume(seed: int = 0, dtype: type = np.int16) -> npt.NDArray[Any]:
    return np.random.default_rng(seed).integers(0, 4000, size=(6, 5, 4)).astype(dtype)


def test_identical_files_match(tmp_path: Path) -> None:
    data = _volume()
    a = _save(tmp_path / "a.nii", data, _affine())
    result = compare_nifti(a, a)
    assert result.ok, result.summary()
    assert result.exact and result.max_abs_diff == 0


def test_one_voxel_off_by_one_is_a_mismatch(tmp_path: Path) -> None:
    data = _volume()
    other = data.copy()
    other[1, 2, 3] += 1
    result = compare_nifti(
        _save(tmp_path / "a.nii", data, _affine()), _save(tmp_path / "b.nii", other, _affine())
    )
    assert not result.ok
    assert result.differing_voxels == 1 and result.max_abs_diff == 1


def test_same_world_different_voxel_order_matches(tmp_path: Path) -> None:
    """Axes flipped and permuted, with the affine saying so: the same image."""
    data = _volume()
    affine = _affine()
    flipped = np.flip(data, axis=0)
    flip_affine = affine @ np.array(
        [[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float
    )
    swapped = np.transpose(flipped, (1, 0, 2))
    swap_affine = flip_affine[:, [1, 0, 2, 3]]
    a = _save(tmp_path / "a.nii", data, affine)
    b = _save(tmp_path / "b.nii", np.ascontiguousarray(swapped), swap_affine)
    result = compare_nifti(a, b)
    assert result.ok, result.summary()


def test_flipped_voxels_with_unchanged_affine_are_a_mismatch(tmp_path: Path) -> None:
    data = _volume()
    a = _save(tmp_path / "a.nii", data, _affine())
    b = _save(tmp_path / "b.nii", np.ascontiguousarray(np.flip(data, axis=2)), _affine())
    assert not compare_nifti(a, b).ok


@pytest.mark.parametrize(("shift", "ok"), [(AFFINE_ATOL / 2, True), (AFFINE_ATOL * 2, False)])
def test_affine_tolerance(tmp_path: Path, shift: float, ok: bool) -> None:
    data = _volume()
    moved = _affine()
    moved[0, 3] += shift
    result = compare_nifti(
        _save(tmp_path / "a.nii", data, _affine()), _save(tmp_path / "b.nii", data, moved)
    )
    assert result.ok is ok, result.summary()


def test_trailing_singleton_axis_is_ignored(tmp_path: Path) -> None:
    data = _volume()
    a = _save(tmp_path / "a.nii", data, _affine())
    b = _save(tmp_path / "b.nii", data[..., np.newaxis], _affine())
    assert compare_nifti(a, b).ok


def test_missing_time_point_is_a_mismatch(tmp_path: Path) -> None:
    series = np.stack([_volume(seed) for seed in range(3)], axis=-1)
    a = _save(tmp_path / "a.nii", series, _affine())
    b = _save(tmp_path / "b.nii", series[..., :2], _affine())
    result = compare_nifti(a, b)
    assert not result.ok and result.max_abs_diff is None


def test_header_scaling_is_applied(tmp_path: Path) -> None:
    """Stored integers with scl_slope / scl_inter equal the float values they stand for."""
    stored = _volume()
    scaled = Nifti1Image(stored, _affine())
    scaled.header.set_slope_inter(0.25, -10.0)
    nib.save(scaled, str(tmp_path / "scaled.nii"))
    plain = _save(tmp_path / "plain.nii", stored.astype(np.float32) * 0.25 - 10.0, _affine())
    assert compare_nifti(tmp_path / "scaled.nii", plain).ok
    off = _save(tmp_path / "off.nii", stored.astype(np.float32) * 0.25 - 9.0, _affine())
    assert not compare_nifti(tmp_path / "scaled.nii", off).ok


def test_float_tolerance_is_relative(tmp_path: Path) -> None:
    data = _volume(dtype=np.float32) + 0.5
    a = _save(tmp_path / "a.nii", data, _affine())
    close = _save(tmp_path / "close.nii", data * (1 + 2e-6), _affine())
    far = _save(tmp_path / "far.nii", data * (1 + 1e-4), _affine())
    assert compare_nifti(a, close).ok
    assert not compare_nifti(a, far).ok


def test_itk_rgb_vector_equals_structured_rgba_reference(tmp_path: Path) -> None:
    """SimpleITK writes RGB as a vector image; dicom2nifti as RGBA voxels."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)  # z, y, x, c for ITK
    image: Any = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((100.0, 120.0, 30.0))  # LPS
    sitk.WriteImage(image, str(tmp_path / "itk.nii"))
    xyz = np.transpose(rgb, (2, 1, 0, 3))
    rgba = np.zeros(xyz.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
    for index, name in enumerate("RGB"):
        rgba[name] = xyz[..., index]
    rgba["A"] = 255
    affine = LPS_TO_RAS @ np.array(
        [[0.8, 0, 0, 100.0], [0, 0.9, 0, 120.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]]
    )
    reference = _save(tmp_path / "ref.nii", rgba, affine)
    assert load_volume(tmp_path / "itk.nii").components == 3
    result = compare_nifti(tmp_path / "itk.nii", reference)
    assert result.ok, result.summary()
    rgba["G"][0, 0, 0] ^= 1
    assert not compare_nifti(tmp_path / "itk.nii", _save(tmp_path / "bad.nii", rgba, affine)).ok


def _series(path: Path, data: npt.NDArray[Any], seconds: float, unit: str = "sec") -> Path:
    image: Any = Nifti1Image(data, _affine())
    image.header.set_xyzt_units("mm", unit)
    zooms = (*image.header.get_zooms()[:3], seconds)
    image.header.set_zooms(zooms)
    nib.save(image, str(path))
    return path


def test_time_spacing_of_a_series_must_agree(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 4000, size=(6, 5, 4, 3)).astype(np.int16)
    a = _series(tmp_path / "a.nii", data, 2.0)
    same = _series(tmp_path / "same_ms.nii", data, 2000.0, "msec")
    other = _series(tmp_path / "other.nii", data, 1.0)
    assert compare_nifti(a, same).ok, compare_nifti(a, same).summary()
    result = compare_nifti(a, other)
    assert not result.ok
    assert "time spacing 2 s, reference 1 s" in result.summary()
