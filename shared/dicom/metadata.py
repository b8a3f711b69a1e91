"""The ``dicom-metadata.json`` document: study -> series -> instances.

Attributes are stored once, at the highest level where they hold for every instance below:

* a study's ``attributes`` are its Patient and Study module attributes;
* a series' ``attributes`` are every other attribute whose value is the same in all of the
  series' instances;
* an instance's ``attributes`` are only what differs between the series' instances.

So the full header of an instance is the union of its study's, its series' and its own
attributes, and nothing is written twice. Each series lists the volumes it was converted
into, and says why anything in it was not converted. The JSON Schema of this document is
``shared/schemas/dicom-metadata.schema.json`` and is generated from these models
(``seriesflow schema``); a test keeps the two in step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import InvalidInputError

SCHEMA_VERSION = "1.0"
METADATA_FILE = "dicom-metadata.json"
SERIES_IMAGES_FILE = "series-images.json"
SELECTED_IMAGES_FILE = "selected-images.json"

JsonAttributes = dict[str, dict[str, Any]]

Orientation = Literal["AXIAL", "CORONAL", "SAGITTAL", "OBLIQUE"]
SkipCode = Literal["not_dicom", "dicomdir", "not_an_instance", "duplicate", "damaged", "unreadable"]
DAMAGE_CODES = frozenset({"damaged", "unreadable", "unreadable_pixel_data"})
"""Skipped-file and not-converted codes that mean DICOM data was lost, not just ignored."""

_ATTRIBUTES_DOC = "DICOM JSON Model object (PS3.18 Annex F), without bulk data"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SkippedFile(_Model):
    """A file below the input folder that is not part of any series."""

    path: str = Field(description="Path relative to the input folder")
    code: SkipCode = Field(
        description="not_dicom, dicomdir, not_an_instance, duplicate: expected in a folder "
        "of DICOM files; damaged, unreadable: DICOM data that could not be read"
    )
    reason: str


class NotConverted(_Model):
    """Why (part of) a series did not become a volume."""

    code: str = Field(description="Machine-readable reason, e.g. gantry_tilt, not_an_image")
    reason: str = Field(description="What was found, for a person")
    stack: int | None = Field(default=None, description="1-based stack, or null for the series")
    instances: list[str] = Field(default_factory=list, description="SOP Instance UIDs concerned")


class AcquiredGeometry(_Model):
    """Where a resampled volume's slices were acquired (LPS, mm)."""

    spacing: list[float] = Field(
        description="mm between columns and rows, and the median gap between slices"
    )
    direction: list[float] = Field(
        description="3x3 direction cosines, row-major, as for the volume: the acquired row, "
        "column and slice-normal directions"
    )
    slicePositions: list[list[float]] = Field(
        description="ImagePositionPatient of each acquired slice, in order along the normal"
    )


class Resampling(_Model):
    """What was done to a stack that was not a regular grid (see docs/conversion.md)."""

    reasons: list[Literal["gantry_tilt", "inconsistent_spacing"]] = Field(
        description="gantry_tilt: the slices drift in-plane as they advance; "
        "inconsistent_spacing: uneven distances between slices"
    )
    tiltDegrees: float | None = Field(
        default=None,
        description="Gantry tilt measured from the slice positions, degrees (null if none)",
    )
    interpolation: Literal["linear"] = Field(
        description="Bilinear within the two nearest acquired slices, linear between them"
    )
    fillValue: float = Field(
        description="Value of voxels outside every acquired slice: the smallest in the stack"
    )
    acquired: AcquiredGeometry
    description: str = Field(description="What was done, for a person")


class Scaling(_Model):
    """The scale factors applied to a volume's stored values: value = stored * slope + intercept."""

    values: Literal["stored", "display", "precise"] = Field(
        description="stored: no scaling; display: RescaleSlope/Intercept (else the Real World "
        "Value mapping); precise: Philips floating-point values, (stored * RS + RI) / (RS * SS)"
    )
    source: str = Field(
        description="RescaleSlope, RealWorldValueMapping, or 'Philips scale slope (2005,100E)'"
    )
    factors: list[list[float]] = Field(
        description="The distinct [slope, intercept] pairs applied to the volume's frames"
    )
    philipsScaleSlopes: list[float] = Field(
        default_factory=list,
        description="Distinct Philips private scale slopes SS (2005,100E) of the frames",
    )


class Volume(_Model):
    """One image file made from a stack of frames of a series."""

    key: str = Field(
        description="Key in series-images.json: the SeriesInstanceUID, or "
        "'<SeriesInstanceUID>-<n>' when the series gives several volumes (stacks in order of "
        "their first instance; a stack split by polarity: normal part first)"
    )
    image: str = Field(description="Image file name in the output folder")
    stack: int = Field(description="1-based number of the stack within its series")
    shape: list[int] = Field(description="Voxels along columns, rows, slices[, timepoints]")
    spacing: list[float] = Field(description="mm between columns, rows and slices")
    origin: list[float] = Field(description="Patient (LPS) position of the first voxel, mm")
    direction: list[float] = Field(
        description="3x3 direction cosines, row-major; columns are the row, column and slice "
        "directions (LPS)"
    )
    orientation: Orientation
    sliceCount: int
    timepointCount: int = 1
    pixelType: str = Field(description="numpy dtype of the written voxels, e.g. int16")
    components: int = Field(default=1, description="3 for RGB")
    attributes: JsonAttributes = Field(
        default_factory=dict,
        description="Attributes that set this stack apart within its series ("
        + _ATTRIBUTES_DOC
        + ")",
    )
    instances: list[str] = Field(description="SOP Instance UIDs in the volume")
    notes: list[str] = Field(
        default_factory=list,
        description="What conversion did, e.g. 'MONOCHROME1 inverted', 'rescaled to float32'",
    )
    resampling: Resampling | None = Field(
        default=None,
        description="Present when the acquired slices were resampled onto the volume's grid",
    )
    imageKind: str | None = Field(
        default=None,
        description="What the images are, when known: MAGNITUDE, PHASE, REAL, IMAGINARY, "
        "FIELD_MAP, FIELD_MAP_HZ, TRACE, ADC, FA or DERIVED (see docs/conversion.md)",
    )
    phaseEncodingPolarity: Literal["NORMAL", "REVERSED"] | None = Field(
        default=None,
        description="For series that say it (GE epi_pepolar): the polarity of this volume's "
        "acquisitions; REVERSED volumes were stored upside down and are flipped back",
    )
    timeSpacing: float | None = Field(
        default=None, description="Seconds between timepoints (4-D volumes; null if unknown)"
    )
    timeSpacingSource: str | None = Field(
        default=None, description="Where timeSpacing comes from, e.g. 'RepetitionTime'"
    )
    scaling: Scaling | None = Field(
        default=None, description="How stored values became the written values"
    )
    preview: str | None = Field(
        default=None,
        description="PNG file name in the output folder (the key with .png): the volume's "
        "three orthogonal middle slices; absent when previews are off",
    )


class Instance(_Model):
    SOPInstanceUID: str
    path: str = Field(description="Path of the source file, relative to the input folder")
    attributes: JsonAttributes = Field(default_factory=dict, description=_ATTRIBUTES_DOC)


class Series(_Model):
    SeriesInstanceUID: str
    attributes: JsonAttributes = Field(default_factory=dict, description=_ATTRIBUTES_DOC)
    volumes: list[Volume] = Field(default_factory=list)
    notConverted: list[NotConverted] = Field(default_factory=list)
    instances: list[Instance]


class Study(_Model):
    StudyInstanceUID: str
    attributes: JsonAttributes = Field(default_factory=dict, description=_ATTRIBUTES_DOC)
    series: list[Series]


class DicomMetadata(_Model):
    """The whole ``dicom-metadata.json`` document."""

    schemaVersion: str = SCHEMA_VERSION
    generator: str
    studies: list[Study] = Field(default_factory=list)
    skippedFiles: list[SkippedFile] = Field(default_factory=list)

    def series_images(self) -> dict[str, str]:
        """The ``series-images.json`` mapping: volume key -> image file name."""
        return {v.key: v.image for st in self.studies for se in st.series for v in se.volumes}

    def to_json(self) -> str:
        return self.model_dump_json(indent=1, exclude_none=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the document, as kept in shared/schemas/."""
    schema = DicomMetadata.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://seriesflow.dev/schemas/dicom-metadata.schema.json"
    schema["title"] = "seriesflow dicom-metadata.json"
    return schema


def load_metadata(path: Path) -> DicomMetadata:
    """Read a ``dicom-metadata.json``; a missing or malformed file is an InvalidInputError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return DicomMetadata.model_validate_json(text)
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not a valid {METADATA_FILE}: {exc}") from exc


def load_series_images(path: Path) -> dict[str, str]:
    """Read a ``series-images.json``: an object of strings."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise InvalidInputError(f"{path} must be an object mapping series UIDs to file names")
    return data
