"""A brain MR study: localizer, T1, T2, FLAIR, 3D MPRAGE, post-contrast T1, and a text SR."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from shared.samples._dicom import (
    BASIC_TEXT_SR_STORAGE,
    MR_IMAGE_STORAGE,
    StackPlan,
    StudyInfo,
    ds_value,
    make_uid,
    new_file_dataset,
    save,
    set_image_pixel,
    set_series,
    to_stored,
    write_stack,
)
from shared.samples.phantom import HEAD, MR_CONTRASTS, PhantomRenderer, StackGeometry

BRAIN_STUDY_DESCRIPTION = "MRI Brain with and without contrast"

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # normal +z: feet to head
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))  # normal +y: anterior to posterior
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))  # normal -x: patient left to right

_BITS_STORED = 12


@dataclass(frozen=True)
class _MRSeries:
    number: int
    folder: str
    description: str
    contrast: str
    image_type: tuple[str, ...]
    rows: int
    slices: int
    fov: float  # mm, square
    thickness: float
    spacing: float
    plane: tuple[tuple[float, float, float], tuple[float, float, float]] = AXIAL
    center: tuple[float, float, float] = (0.0, 0.0, 20.0)
    tr: float = 500.0
    te: float = 12.0
    ti: float | None = None
    flip: float = 90.0
    echo_train: int = 1
    scanning_sequence: str = "SE"
    sequence_variant: str = "SK"
    sequence_name: str = "*se2d1"
    acquisition_type: str = "2D"
    contrast_agent: str | None = None
    extension: str = ".dcm"
    minutes: float = 0.0
    extra_planes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = field(
        default=()
    )


_ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")
_GADOLINIUM = "Gadobutrol 1.0 mmol/mL"

SERIES: tuple[_MRSeries, ...] = (
    _MRSeries(
        number=1,
        folder="01_localizer",
        description="Localizer",
        contrast="T1",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        rows=256,
        slices=3,
        fov=280.0,
        thickness=8.0,
        spacing=20.0,
        plane=SAGITTAL,
        extra_planes=(CORONAL, AXIAL),
        center=(0.0, 0.0, 0.0),
        tr=8.6,
        te=4.0,
        flip=20.0,
        scanning_sequence="GR",
        sequence_variant="SP",
        sequence_name="*fl2d1",
        extension="",
        minutes=0.0,
    ),
    _MRSeries(
        number=2,
        folder="02_t1_se_ax",
        description="T1 SE AX",
        contrast="T1",
        image_type=_ORIGINAL,
        rows=256,
        slices=24,
        fov=240.0,
        thickness=5.0,
        spacing=5.0,
        minutes=2.0,
    ),
    _MRSeries(
        number=3,
        folder="03_t2_tse_ax",
        description="T2 TSE AX",
        contrast="T2",
        image_type=_ORIGINAL,
        rows=256,
        slices=24,
        fov=240.0,
        thickness=5.0,
        spacing=6.0,  # a 1 mm gap: spacing must come from the positions, not the thickness
        tr=4000.0,
        te=95.0,
        flip=150.0,
        echo_train=15,
        sequence_name="*tse2d1_15",
        minutes=6.0,
    ),
    _MRSeries(
        number=4,
        folder="04_t2_flair_ax",
        description="T2 FLAIR AX",
        contrast="FLAIR",
        image_type=_ORIGINAL,
        rows=256,
        slices=24,
        fov=240.0,
        thickness=5.0,
        spacing=5.0,
        tr=9000.0,
        te=90.0,
        ti=2500.0,
        flip=150.0,
        echo_train=16,
        scanning_sequence="SE\\IR",
        sequence_name="*tir2d1_16",
        minutes=10.0,
    ),
    _MRSeries(
        number=5,
        folder="05_t1_mprage_sag",
        description="T1 MPRAGE SAG",
        contrast="MPRAGE",
        image_type=_ORIGINAL,
        rows=128,
        slices=40,
        fov=240.0,
        thickness=1.0,
        spacing=1.0,
        plane=SAGITTAL,
        center=(0.0, 0.0, 10.0),
        tr=2300.0,
        te=2.98,
        ti=900.0,
        flip=9.0,
        scanning_sequence="GR\\IR",
        sequence_variant="SP\\MP",
        sequence_name="*tfl3d1",
        acquisition_type="3D",
        minutes=14.0,
    ),
    _MRSeries(
        number=6,
        folder="06_t1c_se_ax",
        description="T1c SE AX post-contrast",
        contrast="T1C",
        image_type=_ORIGINAL,
        rows=256,
        slices=24,
        fov=240.0,
        thickness=5.0,
        spacing=5.0,
        contrast_agent=_GADOLINIUM,
        minutes=22.0,
    ),
    _MRSeries(
        number=7,
        folder="07_t1c_se_ax_ref",
        description="T1c SE AX ref",
        contrast="T1C",
        image_type=_ORIGINAL,
        rows=256,
        slices=24,
        fov=240.0,
        thickness=5.0,
        spacing=5.0,
        contrast_agent=_GADOLINIUM,
        minutes=26.0,
    ),
)

SR_SERIES_NUMBER = 99
SR_FOLDER = "99_report"
SR_DESCRIPTION = "Preliminary report"

_NOISE_FRACTION = 0.02  # of the brightest tissue


def _set_mr_series(ds: Dataset, study: StudyInfo, spec: _MRSeries, frame_uid: str) -> None:
    set_series(
        ds,
        study,
        modality="MR",
        number=spec.number,
        description=spec.description,
        minutes=spec.minutes,
    )
    ds.ProtocolName = spec.description
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.ImageType = list(spec.image_type)
    ds.ScanningSequence = spec.scanning_sequence
    ds.SequenceVariant = spec.sequence_variant
    ds.ScanOptions = ""
    ds.MRAcquisitionType = spec.acquisition_type
    ds.SequenceName = spec.sequence_name
    ds.SliceThickness = ds_value(spec.thickness)
    ds.SpacingBetweenSlices = ds_value(spec.spacing)
    ds.RepetitionTime = ds_value(spec.tr)
    ds.EchoTime = ds_value(spec.te)
    if spec.ti is not None:
        ds.InversionTime = ds_value(spec.ti)
    ds.EchoNumbers = 1
    ds.EchoTrainLength = spec.echo_train
    ds.FlipAngle = ds_value(spec.flip)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "63.8961"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = "1.5"
    ds.AcquisitionMatrix = [0, spec.rows, spec.rows, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.PercentPhaseFieldOfView = "100"
    ds.PercentSampling = "100"
    if spec.contrast_agent is not None:
        ds.ContrastBolusAgent = spec.contrast_agent
        ds.ContrastBolusVolume = "7.5"
    intensities = MR_CONTRASTS[spec.contrast]
    top = max(intensities.values())
    ds.WindowCenter = ds_value(round(top / 2))
    ds.WindowWidth = ds_value(round(top))


def _write_mr_series(output: Path, study: StudyInfo, spec: _MRSeries, frame_uid: str) -> list[Path]:
    ds = new_file_dataset(MR_IMAGE_STORAGE, study)
    _set_mr_series(ds, study, spec, frame_uid)
    intensities = MR_CONTRASTS[spec.contrast]
    sigma = _NOISE_FRACTION * max(intensities.values())
    pixel = spec.fov / spec.rows
    written: list[Path] = []
    planes = (spec.plane, *spec.extra_planes)
    for p, (row, col) in enumerate(planes):
        geometry = StackGeometry(
            rows=spec.rows,
            columns=spec.rows,
            slices=spec.slices,
            pixel_spacing=(pixel, pixel),
            spacing=spec.spacing,
            row=row,
            col=col,
            center=spec.center,
        )
        set_image_pixel(ds, geometry, bits_stored=_BITS_STORED)
        first = 1 + p * spec.slices
        numbers = [first + k for k in range(spec.slices)]
        plan = StackPlan(
            geometry=geometry,
            renderer=PhantomRenderer(geometry, HEAD, intensities, background=0.0),
            paths=[output / spec.folder / f"IMG{n:04d}{spec.extension}" for n in numbers],
            instance_numbers=numbers,
            sop_uids=[
                make_uid(study.kind, study.seed, "instance", spec.number, n) for n in numbers
            ],
            noise_sigma=sigma,
            convert=to_stored((1 << _BITS_STORED) - 1),
            rician=True,
        )
        written += write_stack(ds, plan, seed_parts=[study.seed, spec.number, p])
    return written


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _write_report(output: Path, study: StudyInfo, referenced: list[tuple[str, str]]) -> Path:
    """A Basic Text SR: a titled container holding one finding as text. No pixel data."""
    ds = new_file_dataset(BASIC_TEXT_SR_STORAGE, study)
    set_series(
        ds, study, modality="SR", number=SR_SERIES_NUMBER, description=SR_DESCRIPTION, minutes=40
    )
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    evidence = Dataset()
    evidence.StudyInstanceUID = study.study_uid
    series_items = []
    for series_uid, sop_uid in referenced:
        sop = Dataset()
        sop.ReferencedSOPClassUID = MR_IMAGE_STORAGE
        sop.ReferencedSOPInstanceUID = sop_uid
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        series_item.ReferencedSOPSequence = [sop]
        series_items.append(series_item)
    evidence.ReferencedSeriesSequence = series_items
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = (
        "Ring-enhancing lesion of about 24 mm in the left frontal lobe with surrounding "
        "oedema. Synthetic data, not a clinical finding."
    )
    ds.ContentSequence = [finding]
    return save(
        ds,
        output / SR_FOLDER / "SR000001",
        make_uid(study.kind, study.seed, "instance", SR_SERIES_NUMBER, 1),
    )


def write_brain_mr_study(output: Path, seed: int = 1) -> list[Path]:
    """Writes one patient's brain MR study below ``output`` and returns the files written.

    Layout: ``output/<NN_series>/IMG0001.dcm`` ..., one folder per series. The series are a
    3-plane localizer (files without extension), axial T1, T2 (1 mm gaps between slices),
    FLAIR, a sagittal 3D MPRAGE, an axial post-contrast T1 (``T1c``, with an enhancing
    lesion), a post-contrast reference series (``T1c ... ref``) and a Basic Text SR
    (``99_report/SR000001``, no pixel data). The same ``seed`` gives the same files.
    """
    output = Path(output)
    study = StudyInfo.create("brain-mr", seed, BRAIN_STUDY_DESCRIPTION)
    frame_uid = make_uid(study.kind, seed, "frame-of-reference")
    written: list[Path] = []
    referenced: list[tuple[str, str]] = []
    for spec in SERIES:
        written += _write_mr_series(output, study, spec, frame_uid)
        if spec.contrast == "T1C" and not referenced:
            referenced.append(
                (
                    make_uid(study.kind, seed, "series", spec.number),
                    make_uid(study.kind, seed, "instance", spec.number, spec.slices // 2),
                )
            )
    written.append(_write_report(output, study, referenced))
    return written
