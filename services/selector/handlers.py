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

from services.replay import (
    EXPORT_PREFIX,
    SELECTED,
    clear_failure,
    events_prefix,
    export_stage,
    record,
    republish_stored,
    stage_of,
)
from services.selector.selecting import export_requests, load_manifest, routes_match, select_job
from services.selector.settings import SelectorSettings
from services.stage import JobStageHandler
from shared import keys
from shared.dicom.metadata import METADATA_FILE, SERIES_IMAGES_FILE
from shared.errors import PermanentError
from shared.events import Envelope, JobParsed, JobSelected, event_id
from shared.logs import get_logger
from shared.pipelines import Pipeline, PipelineRegistry

SERVICE = "selector"
BINDINGS = ("job.parsed.#",)
log = get_logger("selector")


def find_pipeline(registry: PipelineRegistry, name: str) -> Pipeline:
    pipeline = registry.get(name)
    if pipeline is None:
        raise PermanentError(f"pipeline {name} is not defined")
    return pipeline


def check_parsed_keys(job_id: str, body: JobParsed) -> None:
    """The event must point at the job's own outputs (keys are never taken as given)."""
    expected = (keys.output(job_id, METADATA_FILE), keys.output(job_id, SERIES_IMAGES_FILE))
    if (body.metadata_key, body.series_images_key) != expected:
        raise PermanentError("job.parsed names outputs that are not the job's")


class SelectorHandler(JobStageHandler[JobParsed, SelectorSettings]):
    """``handler(envelope, delivery)`` for :meth:`shared.broker.Broker.consume`."""

    service = SERVICE
    expects = JobParsed

    def _stored_export_keys(self, job_id: str) -> list[str]:
        return sorted(
            key
            for key in self.store.list(events_prefix(job_id))
            if stage_of(key).startswith(EXPORT_PREFIX)
        )

    def _handle(self, envelope: Envelope, body: JobParsed) -> None:
        job_id = envelope.job_id
        selected_key = keys.event(job_id, SELECTED)
        if republish_stored(self.store, self.broker, selected_key) is not None:
            stored_exports = self._stored_export_keys(job_id)
            for key in stored_exports:
                republish_stored(self.store, self.broker, key)
            log.info(
                "job already selected, events re-published",
                extra={"exports": len(stored_exports)},
            )
            return
        pipeline = find_pipeline(self.registry, body.pipeline)
        check_parsed_keys(job_id, body)
        result = select_job(self.store, job_id, pipeline)
        requests = []
        if routes_match(pipeline, result.selections):
            manifest = load_manifest(self.store, job_id)
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
        export_keys = [keys.event(job_id, export_stage(r.export_id)) for r in requests]
        for stale in set(self._stored_export_keys(job_id)) - set(export_keys):
            self.store.delete(stale)  # left by an earlier attempt with other routes
        for key, export in zip(export_keys, exports, strict=True):
            record(self.store, key, export)
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
        record(self.store, selected_key, selected)
        clear_failure(self.store, job_id, {"parser", SERVICE})
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
