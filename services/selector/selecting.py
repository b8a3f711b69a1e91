"""Selecting for one job: the parser's outputs and the pipeline's rules in, the selection and
export requests out.

Selection is exactly operator mode's (:func:`shared.selection.select`), and
``selected-images.json`` is written byte for byte as operator mode writes it. For every
route of the pipeline whose selection matched, each destination gets one
:class:`ExportRequested` whose ``export_id`` is derived from the job, the selection and the
destination, and whose ``instance_keys`` are the manifest's keys of every instance of the
selected series (a volume key ``<uid>`` or ``<uid>-<n>`` is mapped to its series through
the metadata's volumes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from shared import keys
from shared.dicom.metadata import (
    METADATA_FILE,
    SELECTED_IMAGES_FILE,
    SERIES_IMAGES_FILE,
    DicomMetadata,
)
from shared.errors import PermanentError
from shared.events import ExportRequested, event_id
from shared.manifest import JobManifest
from shared.pipelines import Pipeline
from shared.selection import SelectedImages, select
from shared.store import ObjectNotFoundError, ObjectStore


@dataclass(frozen=True)
class ParserOutputs:
    metadata: DicomMetadata
    series_images: dict[str, str]


def export_id(job_id: str, selection: str, destination: str) -> str:
    """The export of one selection of a job to one destination: 32 hex digits, stable."""
    return event_id(job_id, "export", selection, destination)


def selected_images_bytes(selections: SelectedImages) -> bytes:
    """``selected-images.json`` exactly as operator mode writes it."""
    return (json.dumps(selections, indent=1, sort_keys=False) + "\n").encode()


def volume_series(metadata: DicomMetadata) -> dict[str, str]:
    """Volume key (``<uid>`` or ``<uid>-<n>``) -> SeriesInstanceUID, from the metadata."""
    return {
        volume.key: series.SeriesInstanceUID
        for study in metadata.studies
        for series in study.series
        for volume in series.volumes
    }


def selected_series(selected: Mapping[str, str], metadata: DicomMetadata) -> set[str]:
    """The SeriesInstanceUIDs of one selection's volume keys."""
    owners = volume_series(metadata)
    return {owners[key] for key in selected if key in owners}


def export_requests(
    job_id: str,
    pipeline: Pipeline,
    selections: SelectedImages,
    metadata: DicomMetadata,
    manifest: JobManifest,
) -> list[ExportRequested]:
    """One request per (matched route selection, destination), in route order, no repeats."""
    requests: list[ExportRequested] = []
    done: set[tuple[str, str]] = set()
    for route in pipeline.routes:
        selected = selections.get(route.selection)
        if not selected:
            continue
        instance_keys = manifest.keys_for_series(selected_series(selected, metadata))
        if not instance_keys:
            continue
        for destination in route.destinations:
            if (route.selection, destination) in done:
                continue
            done.add((route.selection, destination))
            requests.append(
                ExportRequested(
                    export_id=export_id(job_id, route.selection, destination),
                    destination=destination,
                    pipeline=pipeline.name,
                    selection=route.selection,
                    instance_keys=instance_keys,
                )
            )
    return requests


def routes_match(pipeline: Pipeline, selections: SelectedImages) -> bool:
    """True if some route's selection matched (the manifest is needed only then)."""
    return any(selections.get(route.selection) for route in pipeline.routes)


def load_parser_outputs(store: ObjectStore, job_id: str) -> ParserOutputs:
    """dicom-metadata.json and series-images.json of a job; missing or invalid: permanent."""
    try:
        metadata_data = store.get_bytes(keys.output(job_id, METADATA_FILE))
        series_data = store.get_bytes(keys.output(job_id, SERIES_IMAGES_FILE))
    except ObjectNotFoundError as exc:
        raise PermanentError(f"the parser's outputs of job {job_id} are missing") from exc
    try:
        metadata = DicomMetadata.model_validate_json(metadata_data)
    except (ValidationError, ValueError) as exc:
        raise PermanentError(f"{METADATA_FILE} of job {job_id} is not valid") from exc
    try:
        series_images = json.loads(series_data)
    except ValueError as exc:
        raise PermanentError(f"{SERIES_IMAGES_FILE} of job {job_id} is not JSON") from exc
    if not isinstance(series_images, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in series_images.items()
    ):
        raise PermanentError(f"{SERIES_IMAGES_FILE} of job {job_id} is not a mapping of names")
    return ParserOutputs(metadata, series_images)


def load_manifest(store: ObjectStore, job_id: str) -> JobManifest:
    try:
        data = store.get_bytes(keys.manifest(job_id))
    except ObjectNotFoundError as exc:
        raise PermanentError(f"the manifest of job {job_id} is missing") from exc
    try:
        manifest = JobManifest.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        raise PermanentError(f"the manifest of job {job_id} is not valid") from exc
    if manifest.job_id != job_id:
        raise PermanentError(f"the manifest of job {job_id} belongs to job {manifest.job_id}")
    return manifest


@dataclass(frozen=True)
class SelectionResult:
    selections: SelectedImages
    selected_images_key: str
    metadata: DicomMetadata


def select_job(store: ObjectStore, job_id: str, pipeline: Pipeline) -> SelectionResult:
    """Select with the pipeline's rules and store ``selected-images.json``."""
    outputs = load_parser_outputs(store, job_id)
    selections = select(pipeline.rules, outputs.metadata, outputs.series_images)
    key = keys.output(job_id, SELECTED_IMAGES_FILE)
    store.put_bytes(key, selected_images_bytes(selections), "application/json")
    return SelectionResult(selections, key, outputs.metadata)
