"""Building and writing the DICOM Part-10 files of the samples.

Every UID is derived from a string that names what it identifies (generator, seed, series,
instance), hashed into pydicom's UID root, so one seed always gives the same UIDs and two
seeds give different ones. A series is written by filling one dataset with the attributes
its instances share and changing only the per-instance ones before each save: the files
then cost little more than their pixel bytes to write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian, generate_uid

from shared.samples.phantom import PhantomRenderer, StackGeometry, add_noise

UIDS_NAMESPACE = "seriesflow-samples"
IMPLEMENTATION_VERSION_NAME = "SERIESFLOW_SMPL"

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"

_NAMES = (
    "DOE^JANE",
    "ROE^RICHARD",
    "MUSTERMANN^ERIKA",
    "BLOGGS^JOE",
    "DUPONT^MARIE",
    "ROSSI^MARIO",
    "TANAKA^HANAKO",
    "SILVA^JOAO",
    "NOWAK^ANNA",
    "JANSEN^PIETER",
)

StoredArray = npt.NDArray[np.uint16]


def make_uid(*parts: object) -> str:
    """A valid DICOM UID, the same every time for the same ``parts``."""
    key = "|".join([UIDS_NAMESPACE, *(str(p) for p in parts)])
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[key]))


def ds_value(value: float) -> str:
    """A Decimal String of at most 16 characters, without float noise (``0.30000000000000004``)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{value:.9g}"
    return text


def ds_values(values: Iterable[float]) -> list[str]:
    return [ds_value(v) for v in values]


def check_seed(seed: int) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")


@dataclass(frozen=True)
class StudyInfo:
    """Patient and General Study module values of one synthetic study."""

    kind: str
    seed: int
    study_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    date: str
    time: str
    description: str
    accession: str
    study_id: str
    referring_physician: str = "WELBY^MARCUS"

    @classmethod
    def create(cls, kind: str, seed: int, description: str) -> StudyInfo:
        check_seed(seed)
        day = dt.date(2023, 1, 2) + dt.timedelta(days=seed % 700)
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=(seed * 7919) % 20000)
        hour, minute = 7 + seed % 11, (seed * 13) % 60
        return cls(
            kind=kind,
            seed=seed,
            study_uid=make_uid(kind, seed, "study"),
            patient_name=_NAMES[seed % len(_NAMES)],
            patient_id=f"SF{seed:07d}",
            birth_date=birth.strftime("%Y%m%d"),
            sex="FM"[seed % 2],
            date=day.strftime("%Y%m%d"),
            time=f"{hour:02d}{minute:02d}00",
            description=description,
            accession=f"A{(seed * 104729) % 10**8:08d}",
            study_id=str(1 + seed % 9999),
        )

    def time_after(self, minutes: float) -> str:
        start = dt.datetime.strptime(self.date + self.time, "%Y%m%d%H%M%S")
        at = start + dt.timedelta(minutes=minutes)
        return at.strftime("%H%M%S")


def new_file_dataset(sop_class_uid: str, study: StudyInfo) -> FileDataset:
    """A Part-10 dataset with file meta, SOP Common, Patient and General Study modules."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(make_uid(study.kind, study.seed, "placeholder"))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = study.date
    ds.InstanceCreationTime = study.time
    # Patient
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    # General Study
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.StudyDescription = study.description
    ds.AccessionNumber = study.accession
    ds.StudyID = study.study_id
    ds.ReferringPhysicianName = study.referring_physician
    return ds


def set_series(
    ds: Dataset,
    study: StudyInfo,
    *,
    modality: str,
    number: int,
    description: str,
    minutes: float,
) -> str:
    """General Series and General Equipment modules; returns the SeriesInstanceUID."""
    uid = make_uid(study.kind, study.seed, "series", number)
    ds.Modality = modality
    ds.SeriesInstanceUID = uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SeriesDate = study.date
    ds.SeriesTime = study.time_after(minutes)
    ds.ContentDate = study.date
    ds.ContentTime = study.time_after(minutes + 0.5)
    ds.Manufacturer = "seriesflow"
    ds.ManufacturerModelName = "Synthetic " + modality
    ds.InstitutionName = "seriesflow Test Hospital"
    ds.StationName = f"SF{modality}01"
    ds.SoftwareVersions = "0.1"
    ds.OperatorsName = ""
    return uid


def set_image_pixel(
    ds: Dataset, geometry: StackGeometry, *, bits_stored: int, photometric: str = "MONOCHROME2"
) -> None:
    """Image Plane and Image Pixel module values every slice of ``geometry`` shares."""
    ds.ImageOrientationPatient = ds_values(geometry.orientation)
    ds.PixelSpacing = ds_values(geometry.pixel_spacing)
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def save(ds: FileDataset, path: Path, sop_instance_uid: str) -> Path:
    ds.SOPInstanceUID = sop_instance_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def to_stored(
    maximum: int, offset: float = 0.0
) -> Callable[[npt.NDArray[np.float32]], StoredArray]:
    """Maps a float image (plus ``offset``) to unsigned stored values in ``[0, maximum]``."""

    def convert(image: npt.NDArray[np.float32]) -> StoredArray:
        if offset:
            image += np.float32(offset)
        np.rint(image, out=image)
        np.clip(image, 0, maximum, out=image)
        return image.astype(np.uint16)

    return convert


@dataclass
class StackPlan:
    """How to write the slices of one stack: where, with which numbers and UIDs."""

    geometry: StackGeometry
    renderer: PhantomRenderer
    paths: Sequence[Path]  # one per slice index along the normal
    instance_numbers: Sequence[int]
    sop_uids: Sequence[str]
    noise_sigma: float
    convert: Callable[[npt.NDArray[np.float32]], StoredArray]
    rician: bool = False  # magnitude noise, as MR has


def write_stack(
    ds: FileDataset,
    plan: StackPlan,
    seed_parts: Sequence[int],
    order: Sequence[int] | None = None,
) -> list[Path]:
    """Renders and writes every slice of ``plan`` (in ``order`` if given, else along the normal).

    Each slice's noise comes from its own generator, seeded from ``seed_parts`` and the
    slice index, so the pixels do not depend on the write order.
    """
    g = plan.geometry
    normal = g.normal
    buffer = np.empty((g.rows, g.columns), dtype=np.float32)
    written: list[Path] = []
    for k in order if order is not None else range(g.slices):
        image = plan.renderer.render(k, out=buffer)
        add_noise(image, plan.noise_sigma, np.random.default_rng([*seed_parts, k]))
        if plan.rician:
            np.abs(image, out=image)
        stored = plan.convert(image)
        position = g.position(k)
        ds.InstanceNumber = plan.instance_numbers[k]
        ds.ImagePositionPatient = ds_values(position)
        ds.SliceLocation = ds_value(float(np.dot(position, normal)))
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        written.append(save(ds, plan.paths[k], plan.sop_uids[k]))
    return written
