"""Study/series/instance grouping and the placement of attributes, on pydicom's own files."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from shared.dicom.files import InstanceFile, iter_files, read_instance
from shared.dicom.hierarchy import group_instances
from shared.dicom.json_model import dataset_to_json


@pytest.fixture(scope="module")
def dicomdir_tests() -> Path:
    marker = get_testdata_file("DICOMDIR", download=False)
    if marker is None:
        pytest.skip("pydicom's dicomdirtests are not installed")
    return Path(str(marker)).parent


def read_all(root: Path) -> list[InstanceFile]:
    items = [read_instance(p, root) for p in iter_files(root)]
    return [i for i in items if isinstance(i, InstanceFile)]


def test_grouping_matches_the_files_own_uids(dicomdir_tests: Path) -> None:
    files = read_all(dicomdir_tests)
    studies, skipped = group_instances(files)
    assert skipped == []
    expected: dict[str, dict[str, set[str]]] = {}
    for f in files:
        expected.setdefault(f.study_instance_uid, {}).setdefault(f.series_instance_uid, set()).add(
            f.sop_instance_uid
        )
    got = {
        st.study_instance_uid: {
            se.series_instance_uid: {i.SOPInstanceUID for i in se.instances} for se in st.series
        }
        for st in studies
    }
    assert got == expected
    assert len(studies) >= 3


def test_every_instance_header_is_the_union_of_its_levels(dicomdir_tests: Path) -> None:
    files = {f.sop_instance_uid: f for f in read_all(dicomdir_tests)}
    studies, _ = group_instances(files.values())
    for study in studies:
        assert "00100010" in study.attributes  # PatientName lives at study level
        for series in study.series:
            for instance in series.instances:
                rebuilt = {**study.attributes, **series.attributes, **instance.attributes}
                full = dataset_to_json(pydicom.dcmread(files[instance.SOPInstanceUID].path))
                assert rebuilt == full
                # nothing is written twice
                assert not set(series.attributes) & set(instance.attributes)
                assert not set(study.attributes) & set(series.attributes)


def test_values_that_vary_stay_with_the_instance(dicomdir_tests: Path) -> None:
    studies, _ = group_instances(read_all(dicomdir_tests))
    multi = [se for st in studies for se in st.series if len(se.instances) > 1]
    assert multi
    for series in multi:
        assert "00080018" not in series.attributes  # SOPInstanceUID differs per instance
        assert all("00080018" in i.attributes for i in series.instances)
        assert "0020000E" in series.attributes


def test_the_same_instance_twice_is_skipped_once(tmp_path: Path) -> None:
    source = Path(str(get_testdata_file("CT_small.dcm", download=False)))
    for name in ("a.dcm", "b.dcm"):
        (tmp_path / name).write_bytes(source.read_bytes())
    studies, skipped = group_instances(read_all(tmp_path))
    assert len(studies[0].series[0].instances) == 1
    assert [s.path for s in skipped] == ["b.dcm"]
    assert "duplicate" in skipped[0].reason


def test_dicomdir_is_skipped_with_its_reason(dicomdir_tests: Path) -> None:
    item = read_instance(dicomdir_tests / "DICOMDIR", dicomdir_tests)
    assert not isinstance(item, InstanceFile)
    assert "DICOMDIR" in item.reason


def test_nothing_common_to_a_series_stays_with_its_instances(dicomdir_tests: Path) -> None:
    # Several studies, so the sort keys decode some elements of some files first.
    studies, _ = group_instances(read_all(dicomdir_tests))
    assert len(studies) > 1
    for study in studies:
        for series in study.series:
            if len(series.instances) < 2:
                continue
            for tag in series.instances[0].attributes:
                values = [i.attributes.get(tag) for i in series.instances]
                assert any(v != values[0] for v in values), (series.series_instance_uid, tag)
            assert "00200011" in series.attributes or "00200011" in study.attributes


def _truncated_copy(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) - len(data) // 3])  # pixel data cut short


@pytest.mark.parametrize("damaged_first", [True, False])
def test_a_truncated_copy_never_pushes_out_the_complete_file(
    tmp_path: Path, damaged_first: bool
) -> None:
    source = Path(str(get_testdata_file("CT_small.dcm")))
    complete, damaged = tmp_path / "b_complete.dcm", tmp_path / "a_truncated.dcm"
    if not damaged_first:
        complete, damaged = tmp_path / "a_complete.dcm", tmp_path / "b_truncated.dcm"
    complete.write_bytes(source.read_bytes())
    _truncated_copy(source, damaged)
    files = read_all(tmp_path)
    assert len(files) == 2  # the cut copy's header still reads
    assert [f.pixel_data_complete for f in files] == (
        [False, True] if damaged_first else [True, False]
    )
    studies, skipped = group_instances(files)
    (series,) = studies[0].series
    assert [f.relative_path for f in series.files] == [complete.name]
    assert [(s.path, s.code) for s in skipped] == [(damaged.name, "duplicate")]
    if damaged_first:
        assert "cut short" in skipped[0].reason and complete.name in skipped[0].reason


def test_a_truncated_copy_sorting_first_still_converts(tmp_path: Path) -> None:
    from shared.operator.parser import parse_folder
    from shared.volumes.convert import ConversionOptions

    source = Path(str(get_testdata_file("CT_small.dcm")))
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "1.dcm").write_bytes(source.read_bytes())
    _truncated_copy(source, inputs / "0.dcm")
    metadata = parse_folder(inputs, tmp_path / "out", ConversionOptions())
    (series,) = metadata.studies[0].series
    assert [v.sliceCount for v in series.volumes] == [1]
    assert series.notConverted == []
    assert [(s.path, s.code) for s in metadata.skippedFiles] == [("0.dcm", "duplicate")]
