"""Realistic synthetic DICOM data for tests, demos and benchmarks.

Every generator writes valid DICOM Part-10 files (Explicit VR Little Endian) whose pixels
are an analytic phantom of nested ellipsoids with mild noise, and whose UIDs, names and
pixels depend only on the seed:

* :func:`write_brain_mr_study`: a brain MR study with localizer, T1, T2, FLAIR, 3D MPRAGE,
  post-contrast T1, a post-contrast reference series and a Basic Text SR;
* :func:`write_ct_series`: one large axial CT series written in shuffled order;
* :func:`describe`: a one-line-per-series summary of DICOM files.

From the command line: ``seriesflow sample brain-mr|ct --output DIR [--seed N]``.
"""

from shared.samples.brain import BRAIN_STUDY_DESCRIPTION, write_brain_mr_study
from shared.samples.ct import CT_STUDY_DESCRIPTION, write_ct_series
from shared.samples.summary import describe

__all__ = [
    "BRAIN_STUDY_DESCRIPTION",
    "CT_STUDY_DESCRIPTION",
    "describe",
    "write_brain_mr_study",
    "write_ct_series",
]
