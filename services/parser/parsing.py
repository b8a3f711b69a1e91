"""Parsing one job: download its instances, run the operator-mode parser, upload the outputs.

The parsing and conversion are exactly operator mode's
(:func:`shared.operator.parser.parse_folder` and :func:`write_parser_outputs`); only the
transport differs. A job is parsed in a temporary folder that is always removed:

    <tmp>/input/<SOPInstanceUID>.dcm     the manifest's instances
    <tmp>/output/                        images, series-images.json, dicom-metadata.json

Files are named by validated SOP Instance UIDs only (an invalid one gives
``instance-<n>.dcm``; a repeated one ``<uid>-<n>.dcm``, which the parser then reports as a
duplicate). Outputs go to ``jobs/<job_id>/output/<name>``: images first, then
``series-images.json``, and ``dicom-metadata.json`` last, so its presence means every
output is there. A series' images start uploading as soon as it is converted, while the
next series converts (:class:`EarlyUploads`). Output names are deterministic, so parsing
again gives the same objects.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path

from shared import keys
from shared.dicom.metadata import METADATA_FILE, SELECTED_IMAGES_FILE, SERIES_IMAGES_FILE
from shared.errors import OutputError, PermanentError, TransientError
from shared.events import JobParsed
from shared.identifiers import is_valid_uid
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.manifest import InstanceRef, JobManifest
from shared.operator.parser import parse_folder, write_parser_outputs
from shared.pipelines import Pipeline
from shared.store import ObjectNotFoundError
from shared.volumes.convert import ConversionOptions
from shared.volumes.kinds import ScalingMode
from shared.workdir import work_folder

log = get_logger("parser")

UPLOADS_DURING_PARSE = 2
"""Threads uploading a job's images while its later series convert (EarlyUploads)."""

PARTIAL_SUFFIXES = (".partial", ".partial.raw")
"""Names an image has while it is written (shared.volumes.writer), never uploaded."""

DOCUMENTS = (SERIES_IMAGES_FILE, METADATA_FILE)
"""Uploaded after the images, in this order: dicom-metadata.json marks a complete output."""


@dataclass(frozen=True)
class ParseResult:
    metadata_key: str
    series_images_key: str
    image_keys: list[str]
    instances: int
    volumes: int
    skipped: int
    seconds: dict[str, float] = field(default_factory=dict)
    """How long each step took: download, parse (and convert, while the images of the
    series already converted upload), upload (what was left)."""

    def body(self, pipeline: str) -> JobParsed:
        return JobParsed(
            pipeline=pipeline,
            metadata_key=self.metadata_key,
            series_images_key=self.series_images_key,
            image_keys=self.image_keys,
        )


def instance_file_names(instances: Sequence[InstanceRef]) -> list[str]:
    """A safe local file name per instance, in manifest order (see the module docstring)."""
    seen: Counter[str] = Counter()
    names: list[str] = []
    for index, ref in enumerate(instances, start=1):
        uid = ref.sop_instance_uid
        stem = uid if is_valid_uid(uid) else f"instance-{index:06d}"
        count = seen[stem]
        seen[stem] += 1
        names.append(f"{stem}.dcm" if count == 0 else f"{stem}-{count}.dcm")
    return names


def check_instance_key(key: str, job_id: str) -> str:
    """An instance key from a manifest, if it points where instances live; else permanent."""
    allowed = ("incoming/", keys.job_prefix(job_id))
    if (
        not isinstance(key, str)
        or not key.startswith(allowed)
        or ".." in key
        or "//" in key
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
    ):
        raise PermanentError(f"manifest lists an instance key outside the job's instances: {key!r}")
    return key


def upload_plan(file_names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(images, documents): the order outputs are uploaded in.

    Images are every file but the two documents (hidden files and the image writer's
    temporary ``*.partial`` files excluded), sorted; documents are series-images.json then
    dicom-metadata.json, those that exist.
    """
    names = set(file_names)
    images = sorted(
        n
        for n in names
        if n not in DOCUMENTS and not n.startswith(".") and not n.endswith(PARTIAL_SUFFIXES)
    )
    documents = [n for n in DOCUMENTS if n in names]
    return images, documents


def stale_output_keys(existing: Iterable[str], written: Iterable[str]) -> list[str]:
    """Output keys a previous, different parse left behind (selected-images.json is kept)."""
    keep = set(written)
    return sorted(
        k for k in existing if k not in keep and not k.endswith("/" + SELECTED_IMAGES_FILE)
    )


def _run_all(workers: int, tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` on a thread pool; the first failure is raised after all have ended."""
    if not tasks:
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
    _raise_first_failure(futures)


def _raise_first_failure(futures: Iterable[Future[None]]) -> None:
    """Wait for every one of ``futures``; then raise the first failure, if any."""
    futures = list(futures)
    futures_wait(futures)
    errors = [error for f in futures if (error := f.exception()) is not None]
    if errors:
        raise errors[0]


def download_instances(
    jobs: JobStore, manifest: JobManifest, folder: Path, workers: int = 8
) -> None:
    """Download the manifest's instances into ``folder``; a missing one is permanent."""
    names = instance_file_names(manifest.instances)

    def fetch(ref: InstanceRef, name: str) -> Callable[[], None]:
        key = check_instance_key(ref.key, manifest.job_id)

        def task() -> None:
            try:
                data = jobs.instance_bytes(key)
            except ObjectNotFoundError as exc:
                uid = ref.sop_instance_uid if is_valid_uid(ref.sop_instance_uid) else "?"
                raise PermanentError(
                    f"instance {uid} of the job is missing from the store"
                ) from exc
            try:
                (folder / name).write_bytes(data)
            except OSError as exc:  # the local work folder (full disk), not the job
                raise TransientError(
                    f"cannot write an instance to the work folder: {exc.strerror or exc}"
                ) from exc

        return task

    _run_all(workers, [fetch(r, n) for r, n in zip(manifest.instances, names, strict=True)])


def _output_names(output_dir: Path) -> list[str]:
    return [p.name for p in output_dir.iterdir() if p.is_file()]


def _put_output(jobs: JobStore, job_id: str, output_dir: Path, name: str) -> Callable[[], None]:
    content_type = "application/json" if name.endswith(".json") else "application/octet-stream"
    if name.endswith(".png"):  # a volume's preview (shared.volumes.preview)
        content_type = "image/png"

    def task() -> None:
        jobs.put_output_file(job_id, name, output_dir / name, content_type)

    return task


class EarlyUploads:
    """Uploads each series' images while the next series converts.

    Passed to :func:`parse_folder` as its progress callback: each time a series has been
    converted (``"converting"``), the images now in the output folder that are not yet
    being uploaded are submitted to ``pool``. Every image file is complete by then (images
    are written under a temporary name and renamed). :func:`upload_outputs` then waits
    for these and uploads the rest; the documents still go last."""

    def __init__(self, jobs: JobStore, job_id: str, output_dir: Path, pool: Executor) -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._output_dir = output_dir
        self._pool = pool
        self.started: dict[str, Future[None]] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != "converting":
            return
        images, _ = upload_plan(_output_names(self._output_dir))
        for name in images:
            if name not in self.started:
                task = _put_output(self._jobs, self._job_id, self._output_dir, name)
                self.started[name] = self._pool.submit(task)

    def wait(self) -> None:
        """Wait for every upload started; the first failure is raised after all ended."""
        _raise_first_failure(self.started.values())


def upload_outputs(
    jobs: JobStore,
    job_id: str,
    output_dir: Path,
    workers: int = 8,
    early: EarlyUploads | None = None,
) -> tuple[list[str], list[str]]:
    """Upload every output file (those ``early`` started are waited for, not uploaded
    again); returns (image keys, document keys), in upload order."""
    images, documents = upload_plan(_output_names(output_dir))
    started = early.started if early is not None else {}
    put = [_put_output(jobs, job_id, output_dir, n) for n in images if n not in started]
    try:
        _run_all(workers, put)
    finally:
        if early is not None:
            early.wait()
    for name in documents:
        _put_output(jobs, job_id, output_dir, name)()
    return [keys.output(job_id, n) for n in images], [keys.output(job_id, n) for n in documents]


def parse_job(
    jobs: JobStore,
    manifest: JobManifest,
    pipeline: Pipeline,
    *,
    min_slices: int = 2,
    resample: bool = True,
    scaling: ScalingMode = "display",
    work_dir: Path | None = None,
    workers: int = 8,
) -> ParseResult:
    """Parse a job's instances with ``pipeline``'s image format and store the outputs."""
    job_id = manifest.job_id
    options = ConversionOptions(
        image_format=pipeline.image_format,
        min_slices=min_slices,
        resample=resample,
        scaling=scaling,
    )
    seconds: dict[str, float] = {}
    step = time.perf_counter()
    with (
        work_folder("parser", work_dir) as tmp,
        ThreadPoolExecutor(1) as side,
        ThreadPoolExecutor(UPLOADS_DURING_PARSE) as uploads,
    ):
        # What a previous parse stored, listed while the instances download
        listed = side.submit(jobs.output_keys, job_id)
        input_dir, output_dir = Path(tmp) / "input", Path(tmp) / "output"
        input_dir.mkdir()
        output_dir.mkdir()
        download_instances(jobs, manifest, input_dir, workers)
        seconds["download"], step = _since(step)
        early = EarlyUploads(jobs, job_id, output_dir, uploads)
        try:
            try:
                metadata = parse_folder(input_dir, output_dir, options, early)
                series_images = write_parser_outputs(metadata, output_dir)
            except OutputError as exc:
                # The local work folder, not the job, is at fault (full disk): try again later.
                raise TransientError(f"cannot write the parser's outputs: {exc.reason}") from exc
        except BaseException:
            for future in early.started.values():  # those running end before the folder goes
                future.cancel()
            raise
        seconds["parse"], step = _since(step)
        image_keys, document_keys = upload_outputs(jobs, job_id, output_dir, workers, early)
        seconds["upload"], step = _since(step)
        existing = listed.result()
    jobs.delete_outputs(job_id, stale_output_keys(existing, image_keys + document_keys))
    return ParseResult(
        metadata_key=keys.output(job_id, METADATA_FILE),
        series_images_key=keys.output(job_id, SERIES_IMAGES_FILE),
        image_keys=[k for k in image_keys if not k.endswith(".png")],  # volumes, not previews
        instances=sum(len(se.instances) for st in metadata.studies for se in st.series),
        volumes=len(series_images),
        skipped=len(metadata.skippedFiles),
        seconds=seconds,
    )


def _since(started: float) -> tuple[float, float]:
    """Seconds since ``started`` (rounded), and now."""
    now = time.perf_counter()
    return round(now - started, 3), now
