"""What rules choose among: the converted volumes of a ``dicom-metadata.json``.

A candidate is one volume whose key is in ``series-images.json``. Its *view* is every
attribute a rule can test: the study's, the series' and the volume's own attributes (later
levels override earlier ones), indexed by DICOM keyword, plus the derived attributes of
:data:`shared.selection.attributes.DERIVED_ATTRIBUTES`. Attributes that differ between the
instances of a volume (InstanceNumber, SliceLocation, ...) are not in the view.

A series without volumes (a report, a localizer that was not converted) is never a
candidate; :func:`non_candidates` says why, from the metadata's ``notConverted`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.dicom.json_model import values_by_keyword
from shared.dicom.metadata import DicomMetadata, NotConverted, Series, Study, Volume
from shared.selection.attributes import show


@dataclass(frozen=True)
class Candidate:
    key: str
    """The volume's key in series-images.json (and selected-images.json)."""
    image: str
    """The image file name, from series-images.json."""
    study_uid: str
    series_uid: str
    view: Mapping[str, list[Any]]

    @property
    def label(self) -> str:
        """``#5 'AX T1 post'``: the series number and description, for a person."""
        return series_label(self.view)


@dataclass(frozen=True)
class NonCandidate:
    series_uid: str
    key: str | None
    """The volume's key when a converted volume is missing from series-images.json."""
    label: str
    reasons: tuple[str, ...]


def series_label(view: Mapping[str, list[Any]]) -> str:
    parts = []
    if view.get("SeriesNumber"):
        parts.append(f"#{show(view['SeriesNumber'])}")
    if view.get("Modality"):
        parts.append(show(view["Modality"]).strip("'"))
    if view.get("SeriesDescription"):
        parts.append(show(view["SeriesDescription"]))
    return " ".join(parts)


def _view(study: Study, series: Series, volume: Volume, image: str) -> dict[str, list[Any]]:
    merged = {**study.attributes, **series.attributes, **volume.attributes}
    view = values_by_keyword(merged)
    view.setdefault("StudyInstanceUID", [study.StudyInstanceUID])
    view.setdefault("SeriesInstanceUID", [series.SeriesInstanceUID])
    view.update(
        SliceCount=[volume.sliceCount],
        TimepointCount=[volume.timepointCount],
        Orientation=[volume.orientation],
        InstanceCount=[len(volume.instances)],
        Shape=list(volume.shape),
        Spacing=list(volume.spacing),
        PixelType=[volume.pixelType],
        Components=[volume.components],
        StackNumber=[volume.stack],
        StackCount=[len(series.volumes)],
        VolumeKey=[volume.key],
        ImageFile=[image],
    )
    for name, value in (
        ("ImageKind", volume.imageKind),
        ("PhaseEncodingPolarity", volume.phaseEncodingPolarity),
        ("TimeSpacing", volume.timeSpacing),
    ):
        if value is not None:
            view[name] = [value]
    return view


def build_candidates(metadata: DicomMetadata, series_images: Mapping[str, str]) -> list[Candidate]:
    """Every converted volume whose key is in ``series_images``, in document order."""
    return [
        Candidate(
            volume.key,
            series_images[volume.key],
            study.StudyInstanceUID,
            series.SeriesInstanceUID,
            _view(study, series, volume, series_images[volume.key]),
        )
        for study in metadata.studies
        for series in study.series
        for volume in series.volumes
        if volume.key in series_images
    ]


def _reason(entry: NotConverted) -> str:
    stack = f"stack {entry.stack}: " if entry.stack is not None else ""
    return f"{stack}{entry.code}: {entry.reason}"


def non_candidates(metadata: DicomMetadata, series_images: Mapping[str, str]) -> list[NonCandidate]:
    """Series (or parts of series) that rules cannot select, with the reason."""
    out: list[NonCandidate] = []
    for study in metadata.studies:
        for series in study.series:
            label = series_label(values_by_keyword({**study.attributes, **series.attributes}))
            reasons = tuple(_reason(e) for e in series.notConverted)
            if not series.volumes:
                out.append(
                    NonCandidate(
                        series.SeriesInstanceUID, None, label, reasons or ("no volume was made",)
                    )
                )
                continue
            if reasons:
                out.append(NonCandidate(series.SeriesInstanceUID, None, label, reasons))
            out.extend(
                NonCandidate(
                    series.SeriesInstanceUID,
                    volume.key,
                    label,
                    (f"volume {volume.key} is not in series-images.json",),
                )
                for volume in series.volumes
                if volume.key not in series_images
            )
    return out
