"""Compare a volume seriesflow resampled (gantry tilt, uneven spacing) with a reference.

Two resamplings of one acquisition agree only as well as their interpolations do, so the
rule is not voxel identity but: the same grid (shape, and canonical affines within
``AFFINE_MM``) and voxels correlated above ``CORRELATION`` (Pearson, over every voxel).
Some references cover fewer slices than seriesflow writes (dcm2niix's ``_Eq`` can stop
short of the last acquired slice): ``slices`` then crops ours to its first slices, in its
own voxel order, before the comparison.

Where a test data folder ships no resampling reference, one is made at test time with the
Debian package's ``dcm2niix`` (``DCM2NIIX``), which writes ``_Tilt_1`` / ``_Eq_1`` /
``_Tilt_Eq_1`` beside the stacked volume; without it such a check is reported as having
no reference.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .compare import Comparison, load_volume

CORRELATION = 0.999
"""Smallest Pearson correlation of a resampled volume's voxels with its reference's."""
AFFINE_MM = 0.01
"""Largest difference between the two canonical affines' elements, mm."""
DCM2NIIX = "/usr/bin/dcm2niix"


def compare_resampled(ours: Path, reference: Path, slices: int | None = None) -> Comparison:
    """Compare by the rules of the module docstring; never raises on a mismatch."""
    with tempfile.TemporaryDirectory(prefix="seriesflow-resampled-") as tmp:
        if slices is not None:
            ours = _first_slices(ours, slices, Path(tmp))
        mine, ref = load_volume(ours), load_volume(reference)
    problems: list[str] = []
    affine_diff = float(np.max(np.abs(mine.affine - ref.affine)))
    if affine_diff > AFFINE_MM:
        problems.append(f"affines differ by up to {affine_diff:.4g} mm (> {AFFINE_MM} mm)")
    correlation: float | None = None
    max_abs: float | None = None
    differing: int | None = None
    if mine.data.shape != ref.data.shape:
        problems.append(f"shape {mine.shape}, reference {ref.shape}")
    else:
        a = mine.data.astype(np.float64).ravel()
        b = ref.data.astype(np.float64).ravel()
        correlation = float(np.corrcoef(a, b)[0, 1])
        max_abs = float(np.max(np.abs(a - b)))
        differing = int(np.count_nonzero(a != b))
        if not correlation > CORRELATION:
            problems.append(f"voxel correlation {correlation:.6f} (<= {CORRELATION})")
    notes = [f"correlation {correlation:.6f}" if correlation is not None else "no correlation"]
    if differing is not None:
        notes.append(f"{differing} of {mine.data.size} voxel values differ")
    if slices is not None:
        notes.append(f"our first {slices} slices compared (the reference has no more)")
    return Comparison(
        ours=str(ours),
        reference=str(reference),
        ours_shape=mine.shape,
        reference_shape=ref.shape,
        ours_dtype=mine.stored_dtype,
        reference_dtype=ref.stored_dtype,
        max_abs_diff=max_abs,
        differing_voxels=differing,
        max_affine_diff=affine_diff,
        exact=False,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def summary(comparison: Comparison) -> str:
    """One line for a person: the resampling rule and the numbers, or what breaks it."""
    diff = "n/a" if comparison.max_abs_diff is None else f"{comparison.max_abs_diff:.6g}"
    numbers = f"max voxel diff {diff}, affine diff {comparison.max_affine_diff:.3g} mm"
    if comparison.ok:
        return (
            f"same grid (affines within {AFFINE_MM} mm), voxels correlated above "
            f"{CORRELATION}: {numbers}"
        )
    return "; ".join(comparison.problems) + f" ({numbers})"


def _first_slices(path: Path, slices: int, folder: Path) -> Path:
    image: Any = nib.load(str(path))
    cropped = nib.Nifti1Image(
        np.asanyarray(image.dataobj)[:, :, :slices], image.affine, image.header
    )
    target = folder / ("cropped-" + path.name)
    nib.save(cropped, str(target))
    return target


def dcm2niix_output(source: Path, suffix: str, folder: Path) -> Path | None:
    """Run dcm2niix on ``source`` into ``folder``; the file it wrote ending in ``suffix``
    (e.g. ``_Tilt_1.nii``), or None without dcm2niix or without such a file."""
    if shutil.which(DCM2NIIX) is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [DCM2NIIX, "-z", "n", "-b", "n", "-f", "%s", "-o", str(folder), str(source)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    found = sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
    return found[0] if len(found) == 1 else None
