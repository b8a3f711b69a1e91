"""``attribute(ds, keyword)`` gives what ``ds.get(keyword)`` gives, on files as they are
read (raw), awake (shared elements decoded) and for names that are not keywords."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from shared.dicom.attributes import attribute
from shared.dicom.files import HeaderReader, InstanceFile, awake
from shared.samples import write_brain_mr_study
from tests.unit.test_pixels import shipped

_NOT_KEYWORDS = ["NotAKeyword", "filename", "preamble", "is_little_endian"]


def _keywords(ds: Dataset) -> list[str]:
    names = [keyword_for_tag(int(tag)) for tag in ds._dict]
    return [n for n in names if n] + ["PatientWeight", "DoseGridScaling"]  # some absent


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here


def _check(read: Dataset, reference: Dataset) -> None:
    for keyword in _keywords(reference) + _NOT_KEYWORDS:
        assert _same(attribute(read, keyword), reference.get(keyword)), keyword
        assert attribute(read, keyword, "absent") == reference.get(keyword, "absent"), keyword


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"])
def test_the_same_value_as_get_on_a_file_as_read(name: str) -> None:
    reader = HeaderReader()
    item = reader.read(shipped(name), shipped(name).parent)
    assert isinstance(item, InstanceFile)
    with awake([item]):
        reference = HeaderReader().read(shipped(name), shipped(name).parent)
        assert isinstance(reference, InstanceFile)
        with awake([reference]):
            _check(item.dataset, reference.dataset)


def test_the_same_value_as_get_on_a_series_awake(tmp_path: Path) -> None:
    write_brain_mr_study(tmp_path / "in")
    paths = sorted((tmp_path / "in").rglob("*.dcm"))
    reader = HeaderReader()
    items = [reader.read(p, tmp_path) for p in paths]
    files = [i for i in items if isinstance(i, InstanceFile)]
    assert len(files) == len(paths) > 10
    with awake(files):
        decoded = sum(type(e) is DataElement for f in files for e in f.dataset._dict.values())
        assert decoded > 0  # the fast path is taken for the series' shared elements
        for item in files:
            fresh = HeaderReader().read(item.path, tmp_path)
            assert isinstance(fresh, InstanceFile)
            with awake([fresh]):
                _check(item.dataset, fresh.dataset)


def test_a_sequence_is_the_one_pydicom_gives() -> None:
    path = shipped("rtplan.dcm")
    item = HeaderReader().read(path, path.parent)
    assert isinstance(item, InstanceFile)
    with awake([item]):
        sequence = attribute(item.dataset, "BeamSequence")
        assert sequence is item.dataset.BeamSequence
        assert attribute(sequence[0], "BeamNumber") == sequence[0].BeamNumber
