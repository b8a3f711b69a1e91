"""Builders of dicom-metadata.json documents for the selection tests (no tests here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from shared.dicom.metadata import (
    DicomMetadata,
    Instance,
    NotConverted,
    Orientation,
    Series,
    Study,
    Volume,
)

ROOT = "1.2.826.0.1.3680043.8.498"


def attrs(**values: Any) -> dict[str, dict[str, Any]]:
    """A DICOM JSON Model object from keywords: ``attrs(Modality="MR", ImageType=[...])``."""
    out: dict[str, dict[str, Any]] = {}
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        vr = dictionary_VR(tag)
        items = list(value) if isinstance(value, list | tuple) else [value]
        if vr == "PN":
            items = [{"Alphabetic": v} for v in items]
        out[f"{tag:08X}"] = {"vr": vr, "Value": items} if items else {"vr": vr}
    return out


def make_series(
    uid: str,
    number: int,
    description: str | None,
    *,
    modality: str = "MR",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    converted: bool = True,
    not_converted: Sequence[tuple[str, str]] = (),
    slices: int = 24,
    orientation: Orientation = "AXIAL",
    stacks: int = 1,
    extra: dict[str, Any] | None = None,
    image_ext: str = ".nii.gz",
) -> Series:
    values: dict[str, Any] = {
        "Modality": modality,
        "SeriesNumber": number,
        "SeriesInstanceUID": uid,
        "ImageType": list(image_type),
    }
    if description is not None:
        values["SeriesDescription"] = description
    values.update(extra or {})
    volumes = []
    if converted:
        for stack in range(1, stacks + 1):
            key = uid if stacks == 1 else f"{uid}-{stack}"
            volumes.append(
                Volume(
                    key=key,
                    image=key + image_ext,
                    stack=stack,
                    shape=[256, 256, slices],
                    spacing=[0.9, 0.9, 5.0],
                    origin=[0.0, 0.0, 0.0],
                    direction=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                    orientation=orientation,
                    sliceCount=slices,
                    pixelType="int16",
                    attributes=attrs(EchoNumbers=stack) if stacks > 1 else {},
                    instances=[f"{uid}.{stack}.{i}" for i in range(1, slices + 1)],
                )
            )
    return Series(
        SeriesInstanceUID=uid,
        attributes=attrs(**values),
        volumes=volumes,
        notConverted=[NotConverted(code=c, reason=r) for c, r in not_converted],
        instances=[
            Instance(SOPInstanceUID=f"{uid}.1.{i}", path=f"{number}/{i}.dcm") for i in range(1, 3)
        ],
    )


def make_study(
    uid: str,
    description: str,
    series: list[Series],
    *,
    date: str = "20240102",
    time: str = "101500",
) -> Study:
    return Study(
        StudyInstanceUID=uid,
        attributes=attrs(
            StudyInstanceUID=uid,
            StudyDescription=description,
            StudyDate=date,
            StudyTime=time,
            PatientName="Doe^Jane",
            PatientID="P1",
        ),
        series=series,
    )


def make_metadata(*studies: Study) -> DicomMetadata:
    return DicomMetadata(generator="tests", studies=list(studies))


BRAIN = f"{ROOT}.1"
KNEE = f"{ROOT}.2"


def uid(study: str, number: int) -> str:
    return f"{study}.{number}"


def brain_mr() -> DicomMetadata:
    """A brain MR study with the series the Clara example must tell apart, and a knee study."""
    brain = make_study(
        BRAIN,
        "MRI BRAIN W/WO CONTRAST",
        [
            make_series(
                uid(BRAIN, 1),
                1,
                "3-plane localizer",
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                converted=False,
                not_converted=[("localizer", "orthogonal slices of a localizer")],
            ),
            make_series(uid(BRAIN, 2), 2, "AX T1 SE"),
            make_series(uid(BRAIN, 3), 3, "AX T1c post", slices=30),
            make_series(uid(BRAIN, 4), 4, "AX T1c ref"),
            make_series(uid(BRAIN, 5), 5, "AX T1c 3x3"),
            make_series(uid(BRAIN, 6), 6, "AX T1c MPR", image_type=("DERIVED", "SECONDARY")),
            make_series(uid(BRAIN, 7), 7, "AX T2 FSE"),
            make_series(uid(BRAIN, 8), 8, "AX FLAIR", slices=40),
            make_series(
                uid(BRAIN, 9),
                9,
                "Dose report",
                modality="SR",
                image_type=(),
                converted=False,
                not_converted=[("not_an_image", "Structured report: no pixel data")],
            ),
        ],
    )
    knee = make_study(
        KNEE,
        "MR KNEE LEFT",
        [make_series(uid(KNEE, 1), 1, "SAG T1c", orientation="SAGITTAL")],
        date="20240101",
    )
    return make_metadata(brain, knee)


CLARA_T1C_RULES = """
{"selections": [{"name": "T1C", "conditions": {
  "Modality": "(?i)^MR",
  "StudyDescription": "(?i)Brain",
  "ImageType": ["ORIGINAL", "PRIMARY"],
  "SeriesDescription": "^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*"}}]}
"""
