"""The selector's message handler: ``job.parsed`` in; ``job.selected`` and
``export.requested`` out, exactly once in effect.

For each ``JobParsed``:

1. If ``jobs/<job_id>/events/selected.json`` exists, the job was selected already:
   re-publish it and every stored ``export-<export_id>`` event of the job, and
   acknowledge. Nothing is computed or written again.
2. Look up the pipeline (unknown: permanent), apply its rules to the parser's outputs and
   store ``selected-images.json`` (:func:`services.selector.selecting.select_job`).
3. For every route whose selection matched, build the export requests (the manifest is
   read only then).
4. Store each export request, then the ``JobSelected`` envelope last (its presence means
   everything before it is stored), then publish ``JobSelected`` and the export requests.

Failures are handled as in the parser: permanent ones are reported as
``job.failed.<pipeline>`` and dead-lettered; transient ones are retried, and reported when
the last allowed delivery fails.
"""

from __future__ import annotations

from services.replay import clear_failure, republish_stored
from services.selector.selecting import export_requests, routes_match, select_job
from services.selector.settings import SelectorSettings
from services.stage import JobStageHandler
from shared import keys
from shared.dicom.metadata import METADATA_FILE, SERIES_IMAGES_FILE
from shared.errors import PermanentError
from shared.events import Envelope, JobParsed, JobSelected, event_id
from shared.jobstore import EXPORT_PREFIX, SELECTED, export_stage
from shared.logs import get_logger

SERVICE = "selector"
BINDINGS = ("job.parsed.#",)
log = get_logger("selector")


def check_parsed_keys(job_id: str, body: JobParsed) -> None:
    """The event must point at the job's own outputs (keys are never taken as given)."""
    expected = (keys.output(job_id, METADATA_FILE), keys.output(job_id, SERIES_IMAGES_FILE))
    if (body.metadata_key, body.series_images_key) != expected:
        raise PermanentError("job.parsed names outputs that are not the job's")


class SelectorHandler(JobStageHandler[JobParsed, SelectorSettings]):
    """``handler(envelope, delivery)`` for :meth:`shared.broker.Broker.consume`."""

    service = SERVICE
    expects = JobParsed

    def _stored_exports(self, job_id: str) -> list[str]:
        return [s for s in self.jobs.stored_stages(job_id) if s.startswith(EXPORT_PREFIX)]

    def _handle(self, envelope: Envelope, body: JobParsed) -> None:
        job_id = envelope.job_id
        if republish_stored(self.jobs, self.broker, job_id, SELECTED) is not None:
            stored_exports = self._stored_exports(job_id)
            for stage in stored_exports:
                republish_stored(self.jobs, self.broker, job_id, stage)
            log.info(
                "job already selected, events re-published",
                extra={"exports": len(stored_exports)},
            )
            return
        pipeline = self.find_pipeline(body.pipeline)
        check_parsed_keys(job_id, body)
        result = select_job(self.jobs, job_id, pipeline)
        requests = []
        if routes_match(pipeline, result.selections):
            manifest = self.jobs.manifest(job_id)
            requests = export_requests(
                job_id, pipeline, result.selections, result.metadata, manifest
            )
        exports = [
            Envelope.wrap(
                request,
                job_id=job_id,
                producer=SERVICE,
                event_id=request.export_id,
                correlation_id=envelope.correlation_id,
            )
            for request in requests
        ]
        export_stages = [export_stage(r.export_id) for r in requests]
        for stale in set(self._stored_exports(job_id)) - set(export_stages):
            self.jobs.delete_event(job_id, stale)  # left by an earlier attempt with other routes
        for stage, export in zip(export_stages, exports, strict=True):
            self.jobs.record_event(job_id, stage, export)
        selected = Envelope.wrap(
            JobSelected(
                pipeline=pipeline.name,
                selected_images_key=result.selected_images_key,
                selections=result.selections,
            ),
            job_id=job_id,
            producer=SERVICE,
            event_id=event_id(job_id, SELECTED),
            correlation_id=envelope.correlation_id,
        )
        self.jobs.record_event(job_id, SELECTED, selected)
        clear_failure(self.jobs, job_id, {"parser", SERVICE})
        self.broker.publish(selected)
        for export in exports:
            self.broker.publish(export)
        log.info(
            "job selected",
            extra={
                "pipeline": pipeline.name,
                "selections": sorted(result.selections),
                "exports": [(r.selection, r.destination) for r in requests],
            },
        )
