"""Headers read at rest (HeaderReader) give exactly what whole headers give."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian

from shared.dicom.files import (
    HeaderReader,
    InstanceFile,
    SparseSignatures,
    awake,
    iter_files,
    read_instance,
)
from shared.dicom.hierarchy import group_instances
from shared.dicom.json_model import dataset_to_json


@pytest.fixture(scope="module")
def dicomdir_tests() -> Path:
    marker = get_testdata_file("DICOMDIR", download=False)
    if marker is None:
        pytest.skip("pydicom's dicomdirtests are not installed")
    return Path(str(marker)).parent


def _read(root: Path, at_rest: bool) -> list[InstanceFile]:
    reader = HeaderReader()
    items = [reader.read(p, root) if at_rest else read_instance(p, root) for p in iter_files(root)]
    return [i for i in items if isinstance(i, InstanceFile)]


def test_at_rest_a_file_keeps_only_what_differs(dicomdir_tests: Path) -> None:
    files = _read(dicomdir_tests, at_rest=True)
    assert files and all(f.rest is not None for f in files)
    by_series: dict[str, list[InstanceFile]] = {}
    for f in files:
        by_series.setdefault(f.series_instance_uid, []).append(f)
    later = [f for members in by_series.values() for f in members[1:]]
    assert later
    for f in later:
        assert f.rest is not None
        assert len(f.dataset._dict) < len(f.rest.reference.signatures)
        # what grouping reads is there without waking the file
        assert f.sop_instance_uid and f.series_instance_uid and f.pixel_data_complete


def test_a_woken_file_has_its_whole_header(dicomdir_tests: Path) -> None:
    for item in _read(dicomdir_tests, at_rest=True):
        with awake([item]):
            woken = dataset_to_json(item.dataset)
        fresh = dataset_to_json(pydicom.dcmread(item.path))
        assert woken == fresh, item.relative_path
        assert item.rest is not None and item.dataset._dict is item.rest.own  # asleep again


def test_signatures_at_rest_equal_whole_signatures(dicomdir_tests: Path) -> None:
    whole = {f.relative_path: f.signatures for f in _read(dicomdir_tests, at_rest=False)}
    for item in _read(dicomdir_tests, at_rest=True):
        assert isinstance(item.signatures, SparseSignatures)
        assert dict(item.signatures) == dict(whole[item.relative_path])


def test_placement_at_rest_equals_placement_of_whole_headers(dicomdir_tests: Path) -> None:
    expected, _ = group_instances(_read(dicomdir_tests, at_rest=False))
    got, _ = group_instances(_read(dicomdir_tests, at_rest=True))
    assert [s.attributes for s in got] == [s.attributes for s in expected]
    for study, other in zip(got, expected, strict=True):
        for series, reference in zip(study.series, other.series, strict=True):
            assert series.common_tags == reference.common_tags
            assert series.attributes == reference.attributes
            assert series.instances == reference.instances


def test_a_series_in_two_encodings_is_not_shared_across_them(tmp_path: Path) -> None:
    source = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    little = tmp_path / "a.dcm"
    source.save_as(little)
    big = pydicom.dcmread(little)
    for _ in big:  # decode every element, so that it is written again in big endian
        pass
    big.SOPInstanceUID = big.SOPInstanceUID + ".2"
    big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(tmp_path / "b.dcm", big, implicit_vr=False, little_endian=False, force_encoding=True)
    files = _read(tmp_path, at_rest=True)
    assert len(files) == 2
    for item in files:
        with awake([item]):
            woken = dataset_to_json(item.dataset)
        assert woken == dataset_to_json(pydicom.dcmread(item.path)), item.relative_path
