"""The parser's message handler: ``job.received`` in, ``job.parsed`` out, exactly once in effect.

For each ``JobReceived``:

1. If ``jobs/<job_id>/events/parsed.json`` exists, the job was parsed already: re-publish
   that stored envelope (the process may have died between storing and publishing) and
   acknowledge. Nothing is computed or written again.
2. Look up the pipeline (unknown: permanent), load and check the manifest (missing or
   invalid: permanent), parse the job (:func:`services.parser.parsing.parse_job`).
3. Store the ``JobParsed`` envelope, delete a stored parser failure the job has overcome,
   then publish it (event ID derived from the job).

A permanent failure is reported as ``job.failed.<pipeline>`` (stored at
``events/failed.json``) and re-raised, so the broker dead-letters the message with its
reason. A transient failure (store or broker unreachable) is re-raised for the broker to
retry; on the last allowed delivery it is reported as ``job.failed`` too, because the
broker dead-letters the message then.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from services.parser.parsing import parse_job
from services.parser.settings import ParserSettings
from services.replay import PARSED, clear_failure, record, republish_stored
from services.stage import JobStageHandler
from shared import keys
from shared.errors import PermanentError
from shared.events import Envelope, JobReceived, event_id
from shared.logs import get_logger
from shared.manifest import JobManifest
from shared.pipelines import Pipeline, PipelineRegistry
from shared.store import ObjectNotFoundError, ObjectStore

SERVICE = "parser"
BINDINGS = ("job.received.#",)
log = get_logger("parser")
T = TypeVar("T")


def find_pipeline(registry: PipelineRegistry, name: str) -> Pipeline:
    pipeline = registry.get(name)
    if pipeline is None:
        raise PermanentError(f"pipeline {name} is not defined")
    return pipeline


def load_manifest(
    store: ObjectStore, envelope: Envelope, body: JobReceived, pipeline: Pipeline
) -> JobManifest:
    """The job's manifest, checked against the event that announced it."""
    key = keys.manifest(envelope.job_id)
    if body.manifest_key != key:
        raise PermanentError(f"manifest key {body.manifest_key!r} is not the job's ({key})")
    try:
        data = store.get_bytes(key)
    except ObjectNotFoundError as exc:
        raise PermanentError(f"the manifest of job {envelope.job_id} is missing") from exc
    try:
        manifest = JobManifest.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        raise PermanentError(f"the manifest of job {envelope.job_id} is not valid") from exc
    if manifest.job_id != envelope.job_id:
        raise PermanentError(f"the manifest at {key} belongs to job {manifest.job_id}")
    if manifest.pipeline not in (pipeline.name, pipeline.id):
        raise PermanentError(
            f"the manifest names pipeline {manifest.pipeline}, the event {body.pipeline}"
        )
    return manifest


class ParserHandler(JobStageHandler[JobReceived, ParserSettings]):
    """``handler(envelope, delivery)`` for :meth:`shared.broker.Broker.consume`."""

    service = SERVICE
    expects = JobReceived

    def _handle(self, envelope: Envelope, body: JobReceived) -> None:
        job_id = envelope.job_id
        parsed_key = keys.event(job_id, PARSED)
        if republish_stored(self.store, self.broker, parsed_key) is not None:
            log.info("job already parsed, event re-published")
            return
        pipeline = find_pipeline(self.registry, body.pipeline)
        manifest = load_manifest(self.store, envelope, body, pipeline)
        if len(manifest.instances) != body.instance_count:
            log.warning(
                "instance count differs from the manifest",
                extra={"event": body.instance_count, "manifest": len(manifest.instances)},
            )
        result = self.broker.run_alongside(
            lambda: parse_job(
                self.store,
                manifest,
                pipeline,
                min_slices=self.settings.min_slices,
                work_dir=self.settings.work_dir,
                workers=self.settings.transfer_workers,
            ),
        )
        parsed = Envelope.wrap(
            result.body(pipeline.name),
            job_id=job_id,
            producer=SERVICE,
            event_id=event_id(job_id, PARSED),
            correlation_id=envelope.correlation_id,
        )
        record(self.store, parsed_key, parsed)
        clear_failure(self.store, job_id, {SERVICE})
        self.broker.publish(parsed)
        log.info(
            "job parsed",
            extra={
                "pipeline": pipeline.name,
                "instances": result.instances,
                "volumes": result.volumes,
                "skipped_files": result.skipped,
            },
        )
