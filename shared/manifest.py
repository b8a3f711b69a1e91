"""The job manifest: which instances make a job, written by the receiver at release.

Stored at ``jobs/<job_id>/manifest.json`` before ``job.received`` is published. The parser
downloads exactly these instances; the selector maps selected series back to them for
export. Instance keys point at the objects as received (``incoming/...``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.dataset import Dataset

from shared.identifiers import validate_name
from shared.keys import validate_id


class InstanceRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Object key of the instance as received")
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str

    @classmethod
    def from_dataset(cls, key: str, dataset: Dataset) -> InstanceRef:
        """The reference to ``dataset`` (read from a Part-10 file) stored at ``key``."""
        return cls(
            key=key,
            sop_instance_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            study_instance_uid=str(dataset.StudyInstanceUID),
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
        )


class JobManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    pipeline: str
    called_ae_title: str
    calling_ae_title: str
    calling_host: str = ""
    associations: list[str] = Field(description="Association IDs whose instances form the job")
    instances: list[InstanceRef]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("job_id")
    @classmethod
    def _job(cls, value: str) -> str:
        return validate_id(value, "job id")

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, value: str) -> str:
        return validate_name(value, "pipeline")

    def keys_for_series(self, series_instance_uids: set[str]) -> list[str]:
        return [i.key for i in self.instances if i.series_instance_uid in series_instance_uids]
