"""Grouping by study (``grouping: study``), with dcmtk's storescu as the modality: two
studies interleaved on one association, and one study over three associations, each
become one job per study."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from services.config_api.app import create_app
from services.receiver.job import AssociationRecord, job_id_for
from shared import keys
from shared.broker import Broker
from shared.events import Envelope, JobReceived
from shared.manifest import JobManifest
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import free_port
from .test_receiver import (
    observer,  # noqa: F401  (fixture)
    received,
    running,
    storescu,
    wait_for_messages,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.usefixtures("observer")
QUIET = 1.5


def study_config(path: Path, port: int) -> Path:
    ae_title = {"ae-title": "SERIESFLOW", "pipeline": "ct", "grouping": "study", "timeout": QUIET}
    return write_config(path, port, [ae_title])


def uids(paths: list[Path], keyword: str) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).get(keyword)) for p in paths}


def manifests(store: ObjectStore, messages: list[Envelope]) -> dict[str, JobManifest]:
    """The jobs' manifests by their (one) StudyInstanceUID."""
    result = {}
    for message in messages:
        body = message.body
        assert isinstance(body, JobReceived)
        manifest = JobManifest.model_validate(store.get_json(body.manifest_key))
        (study,) = {i.study_instance_uid for i in manifest.instances}
        result[study] = manifest
    return result


def test_two_studies_interleaved_on_one_association_become_two_jobs(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    first = sorted(write_ct_series(tmp_path / "a", slices=4, size=16, seed=11))
    second = sorted(write_ct_series(tmp_path / "b", slices=3, size=16, seed=12))
    assert uids(first, "StudyInstanceUID") != uids(second, "StudyInstanceUID")
    interleaved = [f for pair in zip(first, second, strict=False) for f in pair] + first[3:]
    port = free_port()
    with running(settings, study_config(tmp_path / "c.yaml", port)) as receiver:
        result = storescu(port, interleaved)
        assert result.returncode == 0, result.stdout + result.stderr
        messages = wait_for_messages(observer, 2, timeout=20)
        time.sleep(QUIET + 0.5)
        assert received(observer) == [], "one job per study, published once"
        jobs = manifests(receiver.job_store.objects, messages)
        assert set(jobs) == uids(first, "StudyInstanceUID") | uids(second, "StudyInstanceUID")
        for files in (first, second):
            (study,) = uids(files, "StudyInstanceUID")
            manifest = jobs[study]
            assert {i.sop_instance_uid for i in manifest.instances} == uids(files, "SOPInstanceUID")
            (association,) = manifest.associations
            assert manifest.job_id == job_id_for([association], study)
        (association,) = {a for m in jobs.values() for a in m.associations}
        record = AssociationRecord.model_validate(
            receiver.job_store.objects.get_json(keys.association_record(association))
        )
        assert record.grouping == "study" and record.published
        assert set(record.study_jobs) == set(jobs)


def test_one_study_over_three_associations_becomes_one_job(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = sorted(write_ct_series(tmp_path / "a", slices=6, size=16, seed=21))
    port = free_port()
    with running(settings, study_config(tmp_path / "c.yaml", port)) as receiver:
        # From three senders: grouping by association would make three jobs of it.
        for calling, part in (("CT1", files[:2]), ("PACS", files[2:4]), ("WS", files[4:])):
            result = storescu(port, part, calling=calling)
            assert result.returncode == 0, result.stdout + result.stderr
        (message,) = wait_for_messages(observer, 1, timeout=20)
        time.sleep(QUIET + 0.5)
        assert received(observer) == [], "one job for the study"
        (manifest,) = manifests(receiver.job_store.objects, [message]).values()
        assert len(manifest.associations) == 3
        assert {i.sop_instance_uid for i in manifest.instances} == uids(files, "SOPInstanceUID")
        body = message.body
        assert isinstance(body, JobReceived) and body.instance_count == 6


def test_association_grouping_is_still_the_default(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    first = sorted(write_ct_series(tmp_path / "a", slices=2, size=16, seed=31))
    second = sorted(write_ct_series(tmp_path / "b", slices=2, size=16, seed=32))
    port = free_port()
    with running(settings, write_config(tmp_path / "c.yaml", port)):
        assert storescu(port, first + second).returncode == 0
        (message,) = wait_for_messages(observer, 1)
        body = message.body
        assert isinstance(body, JobReceived) and body.instance_count == 4


def test_grouping_and_duplicates_set_through_the_api_apply_to_the_next_study(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    first = sorted(write_ct_series(tmp_path / "a", slices=2, size=16, seed=41))
    second = sorted(write_ct_series(tmp_path / "b", slices=2, size=16, seed=42))
    port = free_port()
    with running(
        settings, write_config(tmp_path / "c.yaml", port), live_config_seconds=0.2
    ) as receiver:
        api = TestClient(
            create_app(settings, receiver.job_store.objects, None), base_url="http://localhost"
        )
        assert api.post("/api/v1/pipelines", json={"name": "ct"}).status_code == 201
        created = api.post(
            "/api/v1/ae-titles",
            json={
                "aeTitle": "BYSTUDY",
                "pipeline": "ct",
                "grouping": "study",
                "timeout": 1,
                "duplicates": "reject",
            },
        )
        assert created.status_code == 201, created.text
        shown = api.get("/api/v1/ae-titles/BYSTUDY").json()
        assert (shown["grouping"], shown["duplicates"]) == ("study", "reject")
        wait_until(lambda: "BYSTUDY" in receiver.context.ae_titles, 10, "AE title applied")
        result = storescu(port, [first[0], second[0], first[1], second[1]], called="BYSTUDY")
        assert result.returncode == 0, result.stdout + result.stderr
        messages = wait_for_messages(observer, 2, timeout=20)
        jobs = manifests(receiver.job_store.objects, messages)
        assert set(jobs) == uids(first, "StudyInstanceUID") | uids(second, "StudyInstanceUID")
        bad = api.post(
            "/api/v1/ae-titles", json={"aeTitle": "BAD", "pipeline": "ct", "grouping": "series"}
        )
        assert bad.status_code == 422, bad.text
