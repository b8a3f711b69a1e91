"""Compare a volume seriesflow wrote with a reference volume, the way the testdata README says.

Both files are read with nibabel and brought to the closest canonical (RAS+) orientation
with ``nib.as_closest_canonical``, so that converters that write voxels in different orders
(ITK's LPS-derived axes, dcm2niix's, dicom2nifti's) can be compared voxel by voxel. Then:

* **Shape.** Trailing singleton axes beyond the three spatial ones are dropped, so a
  reference shaped ``(x, y, z, 1)`` equals ours shaped ``(x, y, z)``. Vector images
  (ITK writes RGB as NIfTI vector intent, shape ``(x, y, z, 1, 3)``) and RGB(A) references
  with a structured dtype are both turned into a trailing component axis; the reference's
  alpha channel, if any, is dropped.
* **Voxels.** Read through the array proxy, which applies ``scl_slope`` / ``scl_inter``.
  If both sides hold integers, they must be identical. Otherwise each voxel must satisfy
  ``|ours - ref| <= RTOL * |ref| + RTOL * max(|ref|)``: a relative tolerance, plus the same
  fraction of the reference's value range so that a value computed in float32 that
  cancels to about zero (slope * value + intercept) is not held to an absolute zero.
* **Affines.** The two canonical 4x4 affines must agree to within ``AFFINE_ATOL`` mm,
  element by element.
* **Time.** When both are time series, the spacing of their 4th axis (``pixdim[4]`` in
  seconds, by ``xyzt_units``) must agree to within ``TIME_ATOL`` seconds.

:func:`compare_nifti` never raises on a mismatch: it returns a :class:`Comparison` that says
what differs, so that a test can assert on it and a report can tabulate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

AFFINE_ATOL = 1e-3
"""Largest difference allowed between two affines' elements, in mm."""

RTOL = 1e-5
"""Relative voxel tolerance when either side holds floating point data."""

TIME_ATOL = 1e-3
"""Largest difference allowed between two time series' 4th-axis spacings, in seconds."""

_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}

_SPATIAL_DIMS = 3


@dataclass(frozen=True)
class LoadedVolume:
    """A NIfTI file in canonical orientation, its voxels scaled.

    ``data`` always ends with a component axis (length 1 for scalar images), after the
    spatial axes and, for a time series, the time axis.
    """

    path: Path
    data: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]
    stored_dtype: str
    notes: tuple[str, ...] = ()
    time_spacing: float | None = None
    """Seconds between timepoints, for a time series; None for a single volume."""

    @property
    def components(self) -> int:
        return int(self.data.shape[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial (and time) shape, without the component axis."""
        return tuple(int(n) for n in self.data.shape[:-1])


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one of our volumes with one reference."""

    ours: str
    reference: str
    ours_shape: tuple[int, ...]
    reference_shape: tuple[int, ...]
    ours_dtype: str
    reference_dtype: str
    max_abs_diff: float | None
    """Largest absolute voxel difference, None when shapes differ."""
    differing_voxels: int | None
    """Voxels (times components) outside the tolerance, None when shapes differ."""
    max_affine_diff: float
    """Largest absolute difference between the two canonical affines' elements, mm."""
    exact: bool
    """Whether voxels were required to be identical (both sides integer)."""
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    time_spacings: tuple[float | None, float | None] = (None, None)
    """4th-axis spacing (s) of ours and of the reference, for time series."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line for a person: what differs, or that nothing does, with the numbers."""
        diff = "n/a" if self.max_abs_diff is None else f"{self.max_abs_diff:.6g}"
        numbers = f"max voxel diff {diff}, affine diff {self.max_affine_diff:.3g} mm"
        if self.time_spacings[0] is not None:
            numbers += f", time spacing {self.time_spacings[0]:.6g} s"
        if self.ok:
            rule = "identical voxels" if self.exact else f"voxels within rtol {RTOL}"
            return f"{rule}, {numbers}"
        return "; ".join(self.problems) + f" ({numbers})"


def _squeeze_trailing(array: npt.NDArray[Any], keep: int) -> npt.NDArray[Any]:
    """Drop trailing axes of length 1 beyond the first ``keep`` axes."""
    shape = list(array.shape)
    while len(shape) > keep and shape[-1] == 1:
        shape.pop()
    return array.reshape(shape)


def _pad(array: npt.NDArray[Any], ndim: int) -> npt.NDArray[Any]:
    """Append axes of length 1 up to ``ndim`` axes (a 2-D image gets a slice axis)."""
    return array.reshape(array.shape + (1,) * max(0, ndim - array.ndim))


def load_volume(path: Path) -> LoadedVolume:
    """Read a NIfTI file as a :class:`LoadedVolume`."""
    image: Any = nib.load(str(path))
    canonical: Any = nib.as_closest_canonical(image)
    stored = canonical.get_data_dtype()
    raw = np.asanyarray(canonical.dataobj)  # applies scl_slope / scl_inter
    notes: list[str] = []
    if stored.names:  # RGB / RGBA structured voxels (NIfTI RGB24 / RGBA32)
        names = [n for n in stored.names if n in ("R", "G", "B")]
        dropped = [n for n in stored.names if n not in names]
        if dropped:
            notes.append(f"channel(s) {', '.join(dropped)} of {path.name} ignored")
        by_component = np.stack([raw[n] for n in names], axis=0)
    elif int(image.header["intent_code"]) == nib.nifti1.intent_codes["vector"]:
        # ITK vector image (e.g. RGB): (x, y, z, t, components), t = 1 for a 3-D volume.
        by_component = np.moveaxis(raw, -1, 0)
    else:
        by_component = raw[np.newaxis]
    by_component = _pad(_squeeze_trailing(by_component, 1 + _SPATIAL_DIMS), 1 + _SPATIAL_DIMS)
    return LoadedVolume(
        time_spacing=_time_spacing(image, by_component.ndim > 1 + _SPATIAL_DIMS),
        path=Path(path),
        data=np.moveaxis(by_component, 0, -1),
        affine=np.asarray(canonical.affine, dtype=np.float64),
        stored_dtype=str(stored),
        notes=tuple(notes),
    )


def _time_spacing(image: Any, is_series: bool) -> float | None:
    if not is_series:
        return None
    header = image.header
    unit = header.get_xyzt_units()[1]
    return float(header["pixdim"][4]) * _TIME_UNIT_SECONDS.get(unit, 1.0)


def _is_integer(array: npt.NDArray[Any]) -> bool:
    return bool(np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_))


def compare_volumes(ours: LoadedVolume, reference: LoadedVolume) -> Comparison:
    """Compare two loaded volumes; see the module docstring for the rules."""
    problems: list[str] = []
    notes = list(ours.notes) + list(reference.notes)
    affine_diff = float(np.max(np.abs(ours.affine - reference.affine)))
    if affine_diff > AFFINE_ATOL:
        problems.append(f"affines differ by up to {affine_diff:.4g} mm (> {AFFINE_ATOL} mm)")
    times = (ours.time_spacing, reference.time_spacing)
    if None not in times and abs(float(times[0] or 0) - float(times[1] or 0)) > TIME_ATOL:
        problems.append(f"time spacing {times[0]:.6g} s, reference {times[1]:.6g} s")
    if ours.components != reference.components:
        problems.append(f"{ours.components} components, reference has {reference.components}")
    exact = _is_integer(ours.data) and _is_integer(reference.data)
    max_abs: float | None = None
    differing: int | None = None
    if ours.data.shape != reference.data.shape:
        problems.append(f"shape {ours.shape}, reference {reference.shape}")
    else:
        a = ours.data.astype(np.float64)
        b = reference.data.astype(np.float64)
        delta = np.abs(a - b)
        both_nan = np.isnan(a) & np.isnan(b)
        delta[both_nan] = 0.0
        max_abs = float(np.nanmax(delta)) if delta.size else 0.0
        if np.isnan(delta).any():
            max_abs = float("nan")
        if exact:
            bad = delta != 0
        else:
            finite = b[np.isfinite(b)]
            scale = float(np.max(np.abs(finite))) if finite.size else 0.0
            tolerance = RTOL * np.abs(b) + RTOL * scale
            bad = ~(delta <= tolerance)
        differing = int(np.count_nonzero(bad))
        if differing:
            rule = "identical integers" if exact else f"rtol {RTOL} of value and of range"
            problems.append(
                f"{differing} of {delta.size} voxel values differ (max {max_abs:.6g}; "
                f"required: {rule})"
            )
    return Comparison(
        ours=str(ours.path),
        reference=str(reference.path),
        ours_shape=ours.shape,
        reference_shape=reference.shape,
        ours_dtype=ours.stored_dtype,
        reference_dtype=reference.stored_dtype,
        max_abs_diff=max_abs,
        differing_voxels=differing,
        max_affine_diff=affine_diff,
        time_spacings=times,
        exact=exact,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def scaled(volume: LoadedVolume, factor: float, why: str) -> LoadedVolume:
    """``volume`` with its voxels multiplied by ``factor`` (as float64)."""
    return replace(
        volume,
        data=volume.data.astype(np.float64) * factor,
        notes=(*volume.notes, why),
    )


def timepoint(volume: LoadedVolume, index: int) -> LoadedVolume:
    """One timepoint of a time series, as a single volume."""
    if volume.data.ndim != _SPATIAL_DIMS + 2:
        raise ValueError(f"{volume.path.name} is not a time series")
    return replace(
        volume,
        data=volume.data[..., index, :],
        time_spacing=None,
        notes=(*volume.notes, f"timepoint {index} of {volume.path.name}"),
    )


def compare_nifti(
    ours: Path,
    reference: Path,
    reference_scale: float | None = None,
    reference_timepoint: int | None = None,
) -> Comparison:
    """Load and compare two NIfTI files (``.nii`` or ``.nii.gz``).

    ``reference_scale`` multiplies the reference's voxels first, for a reference written
    with a documented different intensity convention (see ``cases.Sidecar``);
    ``reference_timepoint`` compares with one timepoint of a 4-D reference.
    """
    ref = load_volume(reference)
    if reference_timepoint is not None:
        ref = timepoint(ref, reference_timepoint)
    if reference_scale is not None:
        ref = scaled(ref, reference_scale, f"reference x {reference_scale:.9g}")
    return compare_volumes(load_volume(ours), ref)
