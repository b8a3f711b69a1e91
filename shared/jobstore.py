"""The job store: every object of a job, in one place, over :class:`ObjectStore`.

The layout (keys from :mod:`shared.keys`)::

    jobs/<job_id>/manifest.json          the job: pipeline, AE titles, instances (receiver)
    jobs/<job_id>/output/<file>          parser and selector outputs
    jobs/<job_id>/events/<stage>.json    every event the job produced, stored before it is
                                         published (the stage's proof of work; replay)
    exports/<export_id>/state.json       per-destination progress of an export (exporter)
    incoming/<association_id>/           instances as received and the association's
                                         record (receiver)
    quarantine/<association_id>.json     an association that ended without release (receiver)

Stored event names (*stages*)::

    received                 job.received.<pipeline>        receiver
    parsed                   job.parsed.<pipeline>          parser
    selected                 job.selected.<pipeline>        selector
    export-<export_id>       export.requested.<destination> selector, one per destination
    exported-<export_id>     export.completed               exporter, the outcome
    failed                   job.failed.<pipeline>          any stage (the latest failure)

A job's *stage* is the furthest of received, parsed, selected it reached; its *state* is
``failed`` when a failure is stored, ``completed`` when it was selected and every export it
requested has an outcome, else ``running``. This module is the only code that knows the
layout; services, ``seriesflow status``/``replay`` and the config API's job views use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from shared import keys
from shared.dicom.metadata import METADATA_FILE, SERIES_IMAGES_FILE, DicomMetadata
from shared.errors import InvalidInputError, PermanentError
from shared.events import Envelope
from shared.manifest import JobManifest
from shared.store import ObjectNotFoundError, ObjectStore

RECEIVED = "received"
PARSED = "parsed"
SELECTED = "selected"
FAILED = "failed"
EXPORT_PREFIX = "export-"
EXPORTED_PREFIX = "exported-"
STAGES = (RECEIVED, PARSED, SELECTED)
_EVENT_SUFFIX = ".json"
JobState = Literal["running", "completed", "failed"]


def export_stage(export_id: str) -> str:
    """The stored name of an export request: ``export-<export_id>``."""
    return EXPORT_PREFIX + keys.validate_id(export_id, "export id")


def exported_stage(export_id: str) -> str:
    """The stored name of an export's outcome: ``exported-<export_id>``."""
    return EXPORTED_PREFIX + keys.validate_id(export_id, "export id")


def events_prefix(job_id: str) -> str:
    return keys.job_prefix(job_id) + "events/"


def stage_of(key: str) -> str:
    """``jobs/<id>/events/parsed.json`` -> ``parsed``."""
    return key.rsplit("/", 1)[-1].removesuffix(_EVENT_SUFFIX)


def _rank(stage: str) -> tuple[int, str]:
    fixed = {RECEIVED: 0, PARSED: 1, SELECTED: 2}
    if stage in fixed:
        return (fixed[stage], stage)
    if stage.startswith(EXPORT_PREFIX):
        return (3, stage)
    if stage == FAILED:
        return (5, stage)
    return (4, stage)


def replay_order(event_keys: Iterable[str]) -> list[str]:
    """Stored event keys in stage order: received, parsed, selected, export requests, other
    stages by name, then the failure, unless the job was selected since (a stale failure)."""
    ordered = sorted(
        (k for k in event_keys if k.endswith(_EVENT_SUFFIX)), key=lambda k: _rank(stage_of(k))
    )
    if SELECTED in {stage_of(k) for k in ordered}:
        ordered = [k for k in ordered if stage_of(k) != FAILED]
    return ordered


@dataclass(frozen=True)
class ParserOutputs:
    metadata: DicomMetadata
    series_images: dict[str, str]


@dataclass
class JobInfo:
    """What the store says about one job."""

    job_id: str
    pipeline: str | None
    stage: str
    state: JobState
    created: datetime
    updated: datetime
    events: dict[str, datetime] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    has_manifest: bool = False

    @property
    def export_requests(self) -> int:
        return sum(1 for s in self.events if s.startswith(EXPORT_PREFIX))

    @property
    def exports_done(self) -> int:
        return sum(1 for s in self.events if s.startswith(EXPORTED_PREFIX))


def _summarise(job_id: str, objects: dict[str, datetime]) -> JobInfo:
    """A job from its listed keys (relative to ``jobs/<job_id>/``) and their times."""
    events = {
        stage_of(rest): when
        for rest, when in objects.items()
        if rest.startswith("events/") and rest.endswith(_EVENT_SUFFIX)
    }
    outputs = sorted(rest[len("output/") :] for rest in objects if rest.startswith("output/"))
    stage = next((s for s in reversed(STAGES) if s in events), "none")
    requested = {s[len(EXPORT_PREFIX) :] for s in events if s.startswith(EXPORT_PREFIX)}
    done = {s[len(EXPORTED_PREFIX) :] for s in events if s.startswith(EXPORTED_PREFIX)}
    state: JobState = "running"
    if FAILED in events:
        state = "failed"
    elif SELECTED in events and requested <= done:
        state = "completed"
    times = list(objects.values())
    created = objects.get("manifest.json", min(times))
    return JobInfo(
        job_id=job_id,
        pipeline=None,
        stage=stage,
        state=state,
        created=created,
        updated=max(times),
        events=events,
        outputs=outputs,
        has_manifest="manifest.json" in objects,
    )


class JobStore:
    """Jobs' manifests, outputs, events, export states: reading, writing, listing, deleting."""

    def __init__(self, store: ObjectStore) -> None:
        self.objects = store

    # -- manifest --------------------------------------------------------------------------

    def put_manifest(self, manifest: JobManifest) -> str:
        key = keys.manifest(manifest.job_id)
        self.objects.put_bytes(key, manifest.model_dump_json().encode(), "application/json")
        return key

    def manifest(self, job_id: str) -> JobManifest:
        """The job's manifest; missing, not valid or another job's: PermanentError."""
        try:
            data = self.objects.get_bytes(keys.manifest(job_id))
        except ObjectNotFoundError as exc:
            raise PermanentError(f"the manifest of job {job_id} is missing") from exc
        try:
            manifest = JobManifest.model_validate_json(data)
        except (ValidationError, ValueError) as exc:
            raise PermanentError(f"the manifest of job {job_id} is not valid") from exc
        if manifest.job_id != job_id:
            raise PermanentError(f"the manifest of job {job_id} belongs to job {manifest.job_id}")
        return manifest

    def find_manifest(self, job_id: str) -> JobManifest | None:
        """The job's manifest, or None when there is no usable one (transient errors raise)."""
        try:
            return self.manifest(job_id)
        except PermanentError:
            return None

    # -- instances as received (keys recorded in the manifest) -----------------------------

    def instance_file(self, key: str, path: Path) -> None:
        self.objects.get_file(key, path)

    def instance_bytes(self, key: str) -> bytes:
        return self.objects.get_bytes(key)

    def instance_head(self, key: str, length: int) -> bytes:
        return self.objects.get_range(key, 0, length)

    # -- outputs ---------------------------------------------------------------------------

    def put_output(
        self, job_id: str, name: str, data: bytes, content_type: str = "application/json"
    ) -> str:
        key = keys.output(job_id, name)
        self.objects.put_bytes(key, data, content_type)
        return key

    def put_output_file(self, job_id: str, name: str, path: Path, content_type: str) -> str:
        key = keys.output(job_id, name)
        self.objects.put_file(key, path, content_type)
        return key

    def output(self, job_id: str, name: str) -> bytes:
        """An output's bytes; ObjectNotFoundError if it is not stored."""
        return self.objects.get_bytes(keys.output(job_id, name))

    def parser_outputs(self, job_id: str) -> ParserOutputs:
        """dicom-metadata.json and series-images.json of a job; missing or invalid: permanent."""
        try:
            metadata_data = self.output(job_id, METADATA_FILE)
            series_data = self.output(job_id, SERIES_IMAGES_FILE)
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

    def output_keys(self, job_id: str) -> list[str]:
        return sorted(self.objects.list(keys.output_prefix(job_id)))

    def delete_outputs(self, job_id: str, output_keys: Iterable[str] | None = None) -> int:
        """Delete the job's outputs: all, or those of ``output_keys`` (keys of its outputs)."""
        prefix = keys.output_prefix(job_id)
        if output_keys is None:
            return self.objects.delete_prefix(prefix)
        chosen = list(output_keys)
        if any(not k.startswith(prefix) for k in chosen):
            raise PermanentError(f"not outputs of job {job_id}")
        for key in chosen:
            self.objects.delete(key)
        return len(chosen)

    # -- events ----------------------------------------------------------------------------

    def record_event(self, job_id: str, stage: str, envelope: Envelope) -> None:
        """Store ``envelope`` as the job's ``stage`` event (durable when this returns)."""
        self.objects.put_bytes(keys.event(job_id, stage), envelope.to_bytes(), "application/json")

    def load_event(self, job_id: str, stage: str) -> Envelope | None:
        """The stored envelope, or None; a stored object that is no envelope raises
        :class:`InvalidInputError`."""
        try:
            data = self.objects.get_bytes(keys.event(job_id, stage))
        except ObjectNotFoundError:
            return None
        try:
            return Envelope.from_bytes(data)
        except InvalidInputError as exc:
            raise InvalidInputError(f"stored event {stage} is damaged: {exc.reason}") from exc

    def delete_event(self, job_id: str, stage: str) -> None:
        self.objects.delete(keys.event(job_id, stage))

    def stages(self, job_id: str) -> list[str]:
        """The job's stored event names, in replay order."""
        return [stage_of(k) for k in replay_order(self.objects.list(events_prefix(job_id)))]

    def stored_stages(self, job_id: str) -> list[str]:
        """Every stored event name of the job (failure included), sorted by name."""
        return sorted(
            stage_of(k)
            for k in self.objects.list(events_prefix(job_id))
            if k.endswith(_EVENT_SUFFIX)
        )

    # -- export state ----------------------------------------------------------------------

    def export_state(self, export_id: str) -> bytes | None:
        try:
            return self.objects.get_bytes(keys.export_state(export_id))
        except ObjectNotFoundError:
            return None

    def put_export_state(self, export_id: str, data: bytes) -> None:
        self.objects.put_bytes(keys.export_state(export_id), data, "application/json")

    def delete_export_state(self, export_id: str) -> None:
        self.objects.delete(keys.export_state(export_id))

    # -- listing ---------------------------------------------------------------------------

    def _listing(self, prefix: str = "jobs/") -> dict[str, dict[str, datetime]]:
        jobs: dict[str, dict[str, datetime]] = {}
        for key, modified in self.objects.list_with_times(prefix):
            parts = key.split("/", 2)
            if len(parts) == 3 and parts[2]:
                jobs.setdefault(parts[1], {})[parts[2]] = modified
        return jobs

    def list_jobs(self, limit: int | None = None, *, with_pipeline: bool = True) -> list[JobInfo]:
        """Jobs, most recently updated first: id, pipeline (from the manifest), stage, state,
        created and updated times. One listing, plus one manifest read per job returned."""
        jobs = [_summarise(job_id, objects) for job_id, objects in self._listing().items()]
        jobs.sort(key=lambda j: j.updated, reverse=True)
        if limit is not None:
            jobs = jobs[:limit]
        if with_pipeline:
            for job in jobs:
                job.pipeline = self._pipeline(job.job_id, job.has_manifest)
        return jobs

    def job(self, job_id: str) -> JobInfo | None:
        """One job, or None when nothing of it is stored."""
        objects = self._listing(keys.job_prefix(job_id)).get(job_id)
        if not objects:
            return None
        info = _summarise(job_id, objects)
        info.pipeline = self._pipeline(job_id, info.has_manifest)
        return info

    def _pipeline(self, job_id: str, has_manifest: bool) -> str | None:
        if not has_manifest:
            return None
        manifest = self.find_manifest(job_id)
        return None if manifest is None else manifest.pipeline

    # -- deleting --------------------------------------------------------------------------

    def delete_job(self, job_id: str) -> int:
        """Delete every object of the job: its instances as received (those its manifest
        lists), the record of an association left with no instance, its export states, its
        outputs and events, and its manifest last (so an interrupted delete can be run again).
        Returns how many objects were deleted."""
        keys.validate_id(job_id, "job id")
        deleted = 0
        manifest = self.find_manifest(job_id)
        if manifest is not None:
            for instance in manifest.instances:
                self.objects.delete(instance.key)
                deleted += 1
            for association_id in manifest.associations:
                record = keys.association_record(association_id)
                left = [
                    k
                    for k in self.objects.list(keys.incoming_prefix(association_id))
                    if k != record
                ]
                if not left and self.objects.exists(record):
                    self.objects.delete(record)
                    deleted += 1
        for stage in self.stored_stages(job_id):
            if stage.startswith(EXPORT_PREFIX):
                export_id = stage[len(EXPORT_PREFIX) :]
                if self.objects.exists(keys.export_state(export_id)):
                    self.delete_export_state(export_id)
                    deleted += 1
        prefix = keys.job_prefix(job_id)
        manifest_key = keys.manifest(job_id)
        for key in list(self.objects.list(prefix)):
            if key != manifest_key:
                self.objects.delete(key)
                deleted += 1
        if self.objects.exists(manifest_key):
            self.objects.delete(manifest_key)
            deleted += 1
        return deleted

    # -- the receiver's incoming/ (docs/receiver.md) ----------------------------------------

    def ensure_bucket(self) -> None:
        self.objects.ensure_bucket()

    def put_instance(self, key: str, data: bytes) -> None:
        """Store an instance as received at ``key`` (:func:`shared.keys.incoming_instance`)."""
        self.objects.put_bytes(key, data, "application/dicom")

    def delete_instance(self, key: str) -> None:
        self.objects.delete(key)

    def incoming_associations(self) -> list[str]:
        """The names under ``incoming/``, as listed (not validated as association IDs)."""
        return [
            name[len(keys.INCOMING) :].rstrip("/")
            for name in self.objects.list(keys.INCOMING, recursive=False)
        ]

    def incoming_instances(self, association_id: str) -> list[str]:
        """The keys of the instances stored under ``incoming/<association_id>/``."""
        return [
            k for k in self.objects.list(keys.incoming_prefix(association_id)) if k.endswith(".dcm")
        ]

    def delete_incoming(self, association_id: str) -> int:
        """Delete everything under ``incoming/<association_id>/``; how many objects."""
        return self.objects.delete_prefix(keys.incoming_prefix(association_id))

    def put_association_record(self, association_id: str, record: dict[str, Any]) -> None:
        self.objects.put_json(keys.association_record(association_id), record)

    def association_record(self, association_id: str) -> Any:
        """The record's JSON; ObjectNotFoundError if there is none."""
        return self.objects.get_json(keys.association_record(association_id))

    def put_quarantine_record(self, association_id: str, record: dict[str, Any]) -> None:
        self.objects.put_json(keys.quarantine_record(association_id), record)

    def quarantine_record(self, association_id: str) -> Any:
        """The record's JSON; ObjectNotFoundError if there is none."""
        return self.objects.get_json(keys.quarantine_record(association_id))

    def is_quarantined(self, association_id: str) -> bool:
        return self.objects.exists(keys.quarantine_record(association_id))

    def delete_quarantine_record(self, association_id: str) -> None:
        self.objects.delete(keys.quarantine_record(association_id))

    def quarantine_names(self) -> list[str]:
        """The names under ``quarantine/``, as listed (not validated as association IDs)."""
        return [
            k[len(keys.QUARANTINE) :].removesuffix(".json")
            for k in self.objects.list(keys.QUARANTINE)
        ]

    # -- quarantine (receiver; docs/receiver.md) -------------------------------------------
    # Associations that ended without A-RELEASE: the receiver writes their record at
    # quarantine/<association_id>.json and leaves their instances under incoming/. These
    # operations are the operator's: see them, ask for them to be released as a job (the
    # receiver does it, under a job ID derived from the association), or delete them.

    def quarantined(self) -> list[QuarantinedAssociation]:
        """Every quarantined association, oldest first."""
        found = []
        for key in list(self.objects.list(keys.QUARANTINE)):
            try:
                found.append(QuarantinedAssociation.of(self.objects.get_json(key)))
            except ObjectNotFoundError:
                continue
            except (KeyError, TypeError, ValueError):
                found.append(QuarantinedAssociation.damaged(key))
        return sorted(found, key=lambda q: (q.quarantined_at, q.association_id))

    def quarantined_association(self, association_id: str) -> QuarantinedAssociation:
        """One quarantined association; ObjectNotFoundError if there is none."""
        return QuarantinedAssociation.of(
            self.objects.get_json(keys.quarantine_record(association_id))
        )

    def request_quarantine_release(self, association_id: str) -> QuarantinedAssociation:
        """Ask the receiver to release a quarantined association as a job (it does within
        SERIESFLOW_QUARANTINE_CHECK_SECONDS); asking again changes nothing."""
        key = keys.quarantine_record(association_id)
        data, etag = self.objects.get_with_etag(key)
        record = json.loads(data)
        if not record.get("release_requested"):
            record["release_requested"] = True
            self.objects.put_json(key, record, if_match=etag)
        return QuarantinedAssociation.of(record)

    def delete_quarantined(self, association_id: str) -> int:
        """Delete a quarantined association's instances, then its record; how many objects
        (ObjectNotFoundError if it is not quarantined)."""
        if not self.is_quarantined(association_id):
            raise ObjectNotFoundError(f"association {association_id} is not quarantined")
        deleted = self.delete_incoming(association_id)
        self.delete_quarantine_record(association_id)
        return deleted + 1


@dataclass(frozen=True)
class QuarantinedAssociation:
    """What ``seriesflow quarantine`` and ``/api/v1/quarantine`` show of one."""

    association_id: str
    called_ae_title: str
    calling_ae_title: str
    calling_host: str
    ended: str
    reason: str
    quarantined_at: datetime
    instances: int
    studies: int
    release_requested: bool

    @classmethod
    def of(cls, record: dict[str, Any]) -> QuarantinedAssociation:
        instances = record.get("instances") or []
        return cls(
            association_id=keys.validate_id(str(record["association_id"]), "association id"),
            called_ae_title=str(record.get("called_ae_title", "")),
            calling_ae_title=str(record.get("calling_ae_title", "")),
            calling_host=str(record.get("calling_host", "")),
            ended=str(record.get("ended", "aborted")),
            reason=str(record.get("reason", "")),
            quarantined_at=datetime.fromisoformat(
                str(record.get("quarantined_at") or record["released_at"])
            ),
            instances=len(instances),
            studies=len({i.get("study_instance_uid") for i in instances}),
            release_requested=bool(record.get("release_requested", False)),
        )

    @classmethod
    def damaged(cls, key: str) -> QuarantinedAssociation:
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        never = datetime.min.replace(tzinfo=UTC)
        unreadable = "the record cannot be read"
        return cls(name, "", "", "", "damaged", unreadable, never, 0, 0, False)
