"""An axial CT series of a body phantom, written in shuffled order under shuffled names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.samples._dicom import (
    CT_IMAGE_STORAGE,
    StackPlan,
    StudyInfo,
    ds_value,
    make_uid,
    new_file_dataset,
    set_image_pixel,
    set_series,
    to_stored,
    write_stack,
)
from shared.samples.phantom import BODY, CT_HU, PhantomRenderer, StackGeometry

CT_STUDY_DESCRIPTION = "CT Chest Abdomen with contrast"
CT_SERIES_DESCRIPTION = "Body 1.0 CE"
CT_SERIES_NUMBER = 3
CT_FIELD_OF_VIEW = 358.4  # mm: 0.7 mm pixels at 512 x 512
CT_SLICE_SPACING = 1.0
CT_RESCALE_INTERCEPT = -1024
CT_BITS_STORED = 12
AIR_HU = -1000.0
NOISE_HU = 12.0


def write_ct_series(
    output: Path,
    slices: int = 300,
    size: int = 512,
    seed: int = 1,
    *,
    pixel_spacing: float | None = None,
) -> list[Path]:
    """Writes one axial CT series of ``slices`` images of ``size`` x ``size`` into ``output``.

    Pixels are stored unsigned in 12 bits with RescaleIntercept -1024 and RescaleSlope 1
    (Hounsfield units = stored - 1024). Slices are 1 mm apart and thick. Pixels are
    ``pixel_spacing`` mm, by default what keeps a 358.4 mm field of view (0.7 mm at 512),
    so a small test series still shows the whole body.
    As on many scanners, InstanceNumber 1 is the most superior slice, so instance numbers
    run against the slice normal ``cross(row, col) = +z``. The files are written in a random
    order and named ``IM<number>.dcm`` from a random permutation unrelated to position, so
    a converter has to sort by geometry. Returns the paths in the order they were written.
    """
    if slices < 1 or size < 1:
        raise ValueError(f"slices and size must be positive, not {slices} and {size}")
    output = Path(output)
    spacing = pixel_spacing if pixel_spacing is not None else CT_FIELD_OF_VIEW / size
    study = StudyInfo.create("ct-body", seed, CT_STUDY_DESCRIPTION)
    geometry = StackGeometry(
        rows=size,
        columns=size,
        slices=slices,
        pixel_spacing=(spacing, spacing),
        spacing=CT_SLICE_SPACING,
    )
    ds = new_file_dataset(CT_IMAGE_STORAGE, study)
    set_series(
        ds,
        study,
        modality="CT",
        number=CT_SERIES_NUMBER,
        description=CT_SERIES_DESCRIPTION,
        minutes=3.0,
    )
    ds.ProtocolName = "Chest-Abdomen CE"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = make_uid(study.kind, seed, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = ds_value(size * spacing)
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = 200
    ds.ConvolutionKernel = "STANDARD"
    ds.ContrastBolusAgent = "Iohexol 350 mgI/mL"
    ds.RescaleIntercept = str(CT_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    set_image_pixel(ds, geometry, bits_stored=CT_BITS_STORED)

    rng = np.random.default_rng([seed, 0xC7])
    order = [int(k) for k in rng.permutation(slices)]
    names = [int(n) for n in rng.permutation(slices)]
    width = max(4, len(str(slices)))
    plan = StackPlan(
        geometry=geometry,
        renderer=PhantomRenderer(geometry, BODY, CT_HU, background=AIR_HU),
        paths=[output / f"IM{names[k] + 1:0{width}d}.dcm" for k in range(slices)],
        instance_numbers=[slices - k for k in range(slices)],
        sop_uids=[make_uid(study.kind, seed, "instance", slices - k) for k in range(slices)],
        noise_sigma=NOISE_HU,
        convert=to_stored((1 << CT_BITS_STORED) - 1, offset=-CT_RESCALE_INTERCEPT),
    )
    return write_stack(ds, plan, seed_parts=[seed, CT_SERIES_NUMBER], order=order)
