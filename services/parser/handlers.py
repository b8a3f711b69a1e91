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

from services.parser.parsing import parse_job
from services.parser.settings import ParserSettings
from services.replay import clear_failure, republish_stored
from services.stage import JobStageHandler
from shared import keys
from shared.errors import PermanentError
from shared.events import Envelope, JobReceived, event_id
from shared.jobstore import PARSED, JobStore
from shared.logs import get_logger
from shared.manifest import JobManifest
from shared.pipelines import Pipeline

SERVICE = "parser"
BINDINGS = ("job.received.#",)
log = get_logger("parser")


def load_manifest(
    jobs: JobStore, envelope: Envelope, body: JobReceived, pipeline: Pipeline
) -> JobManifest:
    """The job's manifest, checked against the event that announced it."""
    key = keys.manifest(envelope.job_id)
    if body.manifest_key != key:
        raise PermanentError(f"manifest key {body.manifest_key!r} is not the job's ({key})")
    manifest = jobs.manifest(envelope.job_id)
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
        if republish_stored(self.jobs, self.broker, job_id, PARSED) is not None:
            log.info("job already parsed, event re-published")
            return
        pipeline = self.find_pipeline(body.pipeline)
        manifest = load_manifest(self.jobs, envelope, body, pipeline)
        if len(manifest.instances) != body.instance_count:
            log.warning(
                "instance count differs from the manifest",
                extra={"event": body.instance_count, "manifest": len(manifest.instances)},
            )
        result = self.broker.run_alongside(
            lambda: parse_job(
                self.jobs,
                manifest,
                pipeline,
                min_slices=self.settings.min_slices,
                resample=self.settings.resample,
                scaling=self.settings.scaling,
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
        self.jobs.record_event(job_id, PARSED, parsed)
        clear_failure(self.jobs, job_id, {SERVICE})
        self.broker.publish(parsed)
        log.info(
            "job parsed",
            extra={
                "pipeline": pipeline.name,
                "instances": result.instances,
                "volumes": result.volumes,
                "skipped_files": result.skipped,
                "download_seconds": result.seconds.get("download"),
                "parse_seconds": result.seconds.get("parse"),
                "upload_seconds": result.seconds.get("upload"),
            },
        )
