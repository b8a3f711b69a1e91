"""The DICOM Parser operator: a folder of DICOM files in, metadata and volumes out."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared import __version__
from shared.dicom.files import HeaderReader, InstanceFile, awake, iter_files
from shared.dicom.hierarchy import (
    SeriesInstances,
    group_instances,
    place_series_attributes,
    place_study_attributes,
)
from shared.dicom.metadata import (
    DAMAGE_CODES,
    METADATA_FILE,
    SELECTED_IMAGES_FILE,
    SERIES_IMAGES_FILE,
    DicomMetadata,
    Series,
    SkippedFile,
    Study,
)
from shared.errors import InvalidInputError
from shared.logs import get_logger, phi_allowed
from shared.operator.outputs import write_json_atomic, write_text_atomic
from shared.operator.processes import map_in_processes
from shared.selection import SelectionRules, select
from shared.volumes.convert import ConversionOptions, convert_series

log = get_logger("operator.parser")

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)``."""


@dataclass
class ParseSummary:
    files: int = 0
    instances: int = 0
    series: int = 0
    volumes: int = 0
    not_converted: int = 0
    damaged: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    selections: dict[str, dict[str, str]] = field(default_factory=dict)


def _check_folders(input_dir: Path, output_dir: Path) -> None:
    if not input_dir.is_dir():
        raise InvalidInputError(f"input folder {input_dir} does not exist or is not a folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise InvalidInputError(f"output {output_dir} exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot create output folder {output_dir}: {exc.strerror}"
        ) from exc
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise InvalidInputError(f"output folder {output_dir} is not writable")


def _input_files(input_dir: Path, output_dir: Path) -> list[Path]:
    """Every file below the input, but those of the output folder when it lies inside.

    The walk follows no links, so the place of a file below the input is its real place:
    it is compared with the output folder's, not resolved (resolving every file took a
    twentieth of a folder's time).
    """
    try:
        inside = output_dir.resolve().relative_to(input_dir.resolve()).parts
    except ValueError:
        return list(iter_files(input_dir))  # the output folder is elsewhere
    depth = len(inside)
    return [p for p in iter_files(input_dir) if p.relative_to(input_dir).parts[:depth] != inside]


def parse_folder(
    input_dir: Path,
    output_dir: Path,
    options: ConversionOptions,
    progress: ProgressCallback | None = None,
    processes: int = 1,
) -> DicomMetadata:
    """Read every file below ``input_dir``, convert its series into ``output_dir``.

    Writes the image files and returns the metadata document (not yet written). With
    ``processes`` 2 or more, the series are converted by two processes at once (operator
    mode only: see :mod:`shared.operator.processes`).
    """
    _check_folders(input_dir, output_dir)
    paths = _input_files(input_dir, output_dir)
    skipped: list[SkippedFile] = []
    instances: list[InstanceFile] = []
    reader = HeaderReader()  # headers at rest: a series' common elements are held once
    for done, path in enumerate(paths, start=1):
        item = reader.read(path, input_dir)
        if isinstance(item, SkippedFile):
            skipped.append(item)
            details = {"reason": item.reason} | ({"path": item.path} if phi_allowed() else {})
            log.info("file skipped", extra=details)
        else:
            instances.append(item)
        if progress:
            progress("reading", done, len(paths))
    grouped, duplicates = group_instances(instances, place=False)
    skipped.extend(duplicates)
    work: list[tuple[SeriesInstances, frozenset[int]]] = []
    for study in grouped:
        study_tags = place_study_attributes(study)
        work.extend((series, study_tags) for series in study.series)
    converted = 0

    def convert(job: tuple[SeriesInstances, frozenset[int]]) -> Series:
        return _convert_series(job[0], job[1], output_dir, options)

    def series_done() -> None:
        nonlocal converted
        converted += 1
        if progress:
            progress("converting", converted, len(work))

    models = iter(
        map_in_processes(
            work,
            convert,
            weights=[len(series.files) for series, _ in work],
            processes=processes,
            done=series_done,
        )
    )
    studies = [
        Study(
            StudyInstanceUID=study.study_instance_uid,
            attributes=study.attributes,
            series=[next(models) for _ in study.series],
        )
        for study in grouped
    ]
    return DicomMetadata(
        generator=f"seriesflow {__version__}", studies=studies, skippedFiles=skipped
    )


def _convert_series(
    series: SeriesInstances,
    study_tags: frozenset[int],
    output_dir: Path,
    options: ConversionOptions,
) -> Series:
    """One series' attributes placed and its volumes written; its document."""
    with awake(series.files):  # one series' whole headers at a time
        place_series_attributes(series, study_tags)
        volumes, not_converted = convert_series(
            series.series_instance_uid, series.files, output_dir, options
        )
    log.info(
        "series parsed",
        extra={
            "series_instance_uid": series.series_instance_uid,
            "instances": len(series.files),
            "volumes": len(volumes),
            "not_converted": [n.code for n in not_converted],
        },
    )
    return Series(
        SeriesInstanceUID=series.series_instance_uid,
        attributes=series.attributes,
        volumes=volumes,
        notConverted=not_converted,
        instances=series.instances,
    )


def write_parser_outputs(metadata: DicomMetadata, output_dir: Path) -> dict[str, str]:
    """Write dicom-metadata.json and series-images.json; return the series-images mapping."""
    write_text_atomic(output_dir / METADATA_FILE, metadata.to_json() + "\n")
    series_images = metadata.series_images()
    write_json_atomic(output_dir / SERIES_IMAGES_FILE, series_images)
    return series_images


def run_parser_operator(
    input_dir: Path,
    output_dir: Path,
    options: ConversionOptions,
    rules: SelectionRules,
    progress: ProgressCallback | None = None,
    processes: int = 1,
) -> ParseSummary:
    """The whole DICOM Parser operator: parse, convert, write, select."""
    metadata = parse_folder(input_dir, output_dir, options, progress, processes)
    series_images = write_parser_outputs(metadata, output_dir)
    selections = select(rules, metadata, series_images)
    write_json_atomic(output_dir / SELECTED_IMAGES_FILE, selections)
    all_series = [se for st in metadata.studies for se in st.series]
    return ParseSummary(
        files=len(metadata.skippedFiles) + sum(len(se.instances) for se in all_series),
        instances=sum(len(se.instances) for se in all_series),
        series=len(all_series),
        volumes=len(series_images),
        not_converted=sum(1 for se in all_series if se.notConverted),
        damaged=sum(1 for f in metadata.skippedFiles if f.code in DAMAGE_CODES)
        + sum(1 for se in all_series for n in se.notConverted if n.code in DAMAGE_CODES),
        skipped=list(metadata.skippedFiles),
        selections=selections,
    )
