"""The parser service's parts without a store: local file names, instance keys, upload
order, images uploaded while later series convert."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest

from services.parser.parsing import (
    EarlyUploads,
    check_instance_key,
    instance_file_names,
    stale_output_keys,
    upload_outputs,
    upload_plan,
)
from shared import keys
from shared.errors import PermanentError, TransientError
from shared.jobstore import JobStore
from shared.manifest import InstanceRef

JOB = "0123456789abcdef0123456789abcdef"
ASSOCIATION = "fedcba9876543210fedcba9876543210"


def ref(sop: str, series: str = "1.2.3") -> InstanceRef:
    return InstanceRef(
        key=f"incoming/{ASSOCIATION}/{sop}.dcm",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_instance_uid=series,
        study_instance_uid="1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def test_instances_are_named_by_their_sop_instance_uid() -> None:
    assert instance_file_names([ref("1.2.3.4"), ref("1.2.3.5")]) == ["1.2.3.4.dcm", "1.2.3.5.dcm"]


def test_an_invalid_uid_never_becomes_a_file_name() -> None:
    names = instance_file_names([ref("1.2.3"), ref("../../etc/passwd"), ref("1.02"), ref("")])
    assert names == [
        "1.2.3.dcm",
        "instance-000002.dcm",
        "instance-000003.dcm",
        "instance-000004.dcm",
    ]


def test_a_repeated_uid_gets_a_name_of_its_own_that_no_uid_can_take() -> None:
    names = instance_file_names([ref("1.2.3"), ref("1.2.3"), ref("1.2.3.1"), ref("1.2.3")])
    assert names == ["1.2.3.dcm", "1.2.3-1.dcm", "1.2.3.1.dcm", "1.2.3-2.dcm"]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    "key",
    [
        keys.incoming_instance(ASSOCIATION, "1.2.3"),
        keys.job_prefix(JOB) + "instances/1.2.3.dcm",
    ],
)
def test_instance_keys_where_instances_live_are_accepted(key: str) -> None:
    assert check_instance_key(key, JOB) == key


@pytest.mark.parametrize(
    "key",
    [
        "config/pipelines/brain.json",
        f"incoming/{ASSOCIATION}/../../config/x.json",
        "jobs/ffffffffffffffffffffffffffffffff/manifest.json",
        f"incoming/{ASSOCIATION}//1.2.3.dcm",
        f"incoming/{ASSOCIATION}/1.2.3\n.dcm",
        "/incoming/x.dcm",
        "",
    ],
)
def test_instance_keys_elsewhere_are_refused(key: str) -> None:
    with pytest.raises(PermanentError, match="outside the job's instances"):
        check_instance_key(key, JOB)


def test_images_are_uploaded_first_and_the_metadata_last() -> None:
    names = [
        "dicom-metadata.json",
        "2.mhd",
        "series-images.json",
        "1.raw",
        ".2.mhd.partial.mhd",
        "1.mhd",
        "2.raw",
    ]
    images, documents = upload_plan(names)
    assert images == ["1.mhd", "1.raw", "2.mhd", "2.raw"]
    assert documents == ["series-images.json", "dicom-metadata.json"]


def test_an_output_without_volumes_still_uploads_both_documents() -> None:
    assert upload_plan(["dicom-metadata.json", "series-images.json"]) == (
        [],
        ["series-images.json", "dicom-metadata.json"],
    )


def test_stale_outputs_are_those_not_written_again_except_the_selection() -> None:
    prefix = keys.output_prefix(JOB)
    existing = [prefix + n for n in ("a.mhd", "a.raw", "a.nii.gz", "selected-images.json")]
    written = [prefix + n for n in ("a.nii.gz", "dicom-metadata.json")]
    assert stale_output_keys(existing, written) == [prefix + "a.mhd", prefix + "a.raw"]


def test_the_image_writers_temporary_files_are_never_uploaded() -> None:
    images, _ = upload_plan(["1.nii.partial", "2.mhd.partial", "2.mhd.partial.raw", "3.nii"])
    assert images == ["3.nii"]


class RecordingJobs:
    """put_output_file of a JobStore, recording the order; ``fail`` names raise."""

    def __init__(self, fail: str = "") -> None:
        self.puts: list[str] = []
        self.fail = fail
        self.lock = threading.Lock()

    def put_output_file(self, job_id: str, name: str, path: Path, content_type: str) -> str:
        assert path.is_file()
        time.sleep(0.01)
        if name == self.fail:
            raise TransientError(f"store down for {name}")
        with self.lock:
            self.puts.append(name)
        return keys.output(job_id, name)


def _write(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def test_a_converted_series_images_upload_while_the_next_series_converts(
    tmp_path: Path,
) -> None:
    jobs = RecordingJobs()
    with ThreadPoolExecutor(2) as pool:
        early = EarlyUploads(cast(JobStore, jobs), JOB, tmp_path, pool)
        _write(tmp_path, "1.nii", "1.png")
        early("reading", 3, 3)  # not a series boundary: nothing starts
        assert early.started == {}
        early("converting", 1, 2)
        _write(tmp_path, "2.nii.partial")  # the next series, being written
        assert sorted(early.started) == ["1.nii", "1.png"]
        (tmp_path / "2.nii.partial").rename(tmp_path / "2.nii")
        early("converting", 2, 2)
        assert sorted(early.started) == ["1.nii", "1.png", "2.nii"]
        _write(tmp_path, "series-images.json", "dicom-metadata.json")
        images, documents = upload_outputs(cast(JobStore, jobs), JOB, tmp_path, 4, early)
    assert sorted(jobs.puts[:3]) == ["1.nii", "1.png", "2.nii"]  # each uploaded once
    assert jobs.puts[3:] == ["series-images.json", "dicom-metadata.json"]  # documents last
    assert images == [keys.output(JOB, n) for n in ("1.nii", "1.png", "2.nii")]
    assert documents == [keys.output(JOB, n) for n in ("series-images.json", "dicom-metadata.json")]


def test_a_failed_early_upload_fails_the_upload_and_no_document_is_stored(
    tmp_path: Path,
) -> None:
    jobs = RecordingJobs(fail="1.nii")
    with ThreadPoolExecutor(2) as pool:
        early = EarlyUploads(cast(JobStore, jobs), JOB, tmp_path, pool)
        _write(tmp_path, "1.nii")
        early("converting", 1, 1)
        _write(tmp_path, "series-images.json", "dicom-metadata.json")
        with pytest.raises(TransientError, match=r"1\.nii"):
            upload_outputs(cast(JobStore, jobs), JOB, tmp_path, 4, early)
    assert "dicom-metadata.json" not in jobs.puts
