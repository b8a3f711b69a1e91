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

from shared.dicom.metadata import (
    SELECTED_IMAGES_FILE,
    DicomMetadata,
)
from shared.events import ExportRequested, event_id
from shared.jobstore import JobStore
from shared.manifest import JobManifest
from shared.pipelines import Pipeline
from shared.selection import SelectedImages, select


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


@dataclass(frozen=True)
class SelectionResult:
    selections: SelectedImages
    selected_images_key: str
    metadata: DicomMetadata


def select_job(jobs: JobStore, job_id: str, pipeline: Pipeline) -> SelectionResult:
    """Select with the pipeline's rules and store ``selected-images.json``."""
    outputs = jobs.parser_outputs(job_id)
    selections = select(pipeline.rules, outputs.metadata, outputs.series_images)
    key = jobs.put_output(job_id, SELECTED_IMAGES_FILE, selected_images_bytes(selections))
    return SelectionResult(selections, key, outputs.metadata)
