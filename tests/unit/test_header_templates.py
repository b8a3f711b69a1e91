"""Series templates: a later file's elements recognised by their bytes give what parsing gives."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.dicom import files as files_module
from shared.dicom.files import (
    HeaderReader,
    InstanceFile,
    _matching_run,
    _parse_explicit_little,
    _Template,
    awake,
    iter_files,
    read_instance,
    tags_outside,
)
from shared.dicom.hierarchy import _common_tags, group_instances
from shared.dicom.json_model import dataset_to_json
from shared.volumes.kinds import private_value
from tests.conformance.cases import locate_testdata

_COMMENTS = BaseTag(0x00204000)  # ImageComments: between shared elements
_PROTOCOL = BaseTag(0x00181030)  # ProtocolName: shared
_CODES = BaseTag(0x00081032)  # ProcedureCodeSequence: undefined length, shared


def _write(path: Path, series: str, study: str, number: int, **changes: object) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = changes.pop("charset", "ISO_IR 100")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "MR"
    ds.Manufacturer = "Acme"
    ds.InstitutionName = "Hôpital"
    ds.StationName = "MR1"
    ds.ProtocolName = "t1_mprage2"  # even: its last byte is its own
    ds.SliceThickness = "1.0"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InstanceNumber = number
    ds.ImageComments = "first" if number == 1 else "the same"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291001, "LO", "private, shared")
    item = Dataset()
    item.CodeValue = "X"
    item.CodeMeaning = "a code"
    ds.ProcedureCodeSequence = Sequence([item])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    ds.Rows, ds.Columns = 2, 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(8))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def _template(reader: HeaderReader, series: str) -> _Template:
    template = reader._templates._by_series.get(series.encode() + b"\0" * (len(series) % 2))
    assert template is not None, "no template for the series"
    return template


def _assert_whole_headers(files: list[InstanceFile]) -> None:
    for item in files:
        with awake([item]):
            woken = dataset_to_json(item.dataset)
        assert woken == dataset_to_json(pydicom.dcmread(item.path)), item.relative_path


def _read_all(folder: Path) -> tuple[HeaderReader, list[InstanceFile]]:
    reader = HeaderReader()
    items = [reader.read(p, folder) for p in iter_files(folder)]
    files = [i for i in items if isinstance(i, InstanceFile)]
    assert len(files) == len(items)
    return reader, files


def test_the_second_file_of_a_series_becomes_its_template(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    _write(tmp_path / "1.dcm", series, study, 1)
    reader = HeaderReader()
    reader.read(tmp_path / "1.dcm", tmp_path)
    assert not reader._templates._by_series  # a one-file series gets none
    _write(tmp_path / "2.dcm", series, study, 2)
    second = reader.read(tmp_path / "2.dcm", tmp_path)
    assert isinstance(second, InstanceFile) and second.rest is not None
    template = _template(reader, series)
    assert template.reference is second.rest.reference
    # the shared elements, with what every file keeps itself left out
    assert _PROTOCOL in dict(template.items) and _CODES in dict(template.items)
    assert 0x0020000E not in template.index and 0x00200013 not in template.index
    assert 0x00080005 not in template.index and 0x7FE00010 not in template.index
    assert int(_COMMENTS) not in template.index  # file 1's differs: not shared


def test_runs_that_match_are_taken_from_the_reference(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    for n in range(1, 4):
        _write(tmp_path / f"{n}.dcm", series, study, n)
    _write(tmp_path / "4.dcm", series, study, 4, ProtocolName="t1_mprage3")  # last byte
    _write(tmp_path / "5.dcm", series, study, 5, StationName=None)  # one missing
    _write(tmp_path / "6.dcm", series, study, 6, OperatorsName="Smith")  # one more
    reader, files = _read_all(tmp_path)
    template = _template(reader, series)
    shared = dict(template.items)
    for item in files[2:]:
        parsed = _parse_explicit_little(item.path.read_bytes(), item.path, {}, template)
        taken = [tag for tag, elem in parsed._dict.items() if shared.get(tag) is elem]
        differs = {"4.dcm": {_PROTOCOL}, "5.dcm": {BaseTag(0x00081010)}, "6.dcm": set()}
        expected = set(shared) - differs.get(item.path.name, set())
        assert set(taken) == expected, item.path.name  # every other shared one taken
        assert dataset_to_json(parsed) == dataset_to_json(pydicom.dcmread(item.path))
    assert files[3].rest is not None and _PROTOCOL in files[3].rest.own
    assert files[5].rest is not None and BaseTag(0x00081070) in files[5].rest.own
    _assert_whole_headers(files)


def test_another_character_set_is_parsed_not_taken(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    for n in (1, 2):
        _write(tmp_path / f"{n}.dcm", series, study, n)
    _write(tmp_path / "3.dcm", series, study, 3, charset="ISO_IR 192")
    reader, files = _read_all(tmp_path)
    template = _template(reader, series)
    third = files[2].path
    parsed = _parse_explicit_little(third.read_bytes(), third, {}, template)
    shared = dict(template.items)
    assert not [tag for tag, elem in parsed._dict.items() if shared.get(tag) is elem]
    _assert_whole_headers(files)


def test_another_series_template_is_not_used(tmp_path: Path) -> None:
    """Two series alike but for their UIDs: a file given the other's template (a wrong
    guess) is parsed again without it."""
    study, first_series, other_series = generate_uid(), generate_uid(), generate_uid()
    for n in (1, 2):
        _write(tmp_path / f"a{n}.dcm", first_series, study, n)
    _write(tmp_path / "b1.dcm", other_series, study, 1)
    reader, _ = _read_all(tmp_path)
    template = _template(reader, first_series)
    other = tmp_path / "b1.dcm"
    parsed = _parse_explicit_little(other.read_bytes(), other, {}, template)
    shared = dict(template.items)
    assert not [tag for tag, elem in parsed._dict.items() if shared.get(tag) is elem]
    assert dataset_to_json(parsed) == dataset_to_json(pydicom.dcmread(other))


def test_interleaved_series_each_use_their_own_template(tmp_path: Path) -> None:
    study, one, two = generate_uid(), generate_uid(), generate_uid()
    for n in range(1, 5):
        _write(tmp_path / f"{n}a.dcm", one, study, n)
        _write(tmp_path / f"{n}b.dcm", two, study, n, ProtocolName="other")
    reader, files = _read_all(tmp_path)
    templates = {str(uid): _template(reader, uid) for uid in (one, two)}
    for item in files[4:]:  # from the third file of each series
        data = item.path.read_bytes()
        template = reader._templates.guess(data)
        assert template is templates[item.series_instance_uid], item.relative_path
    _assert_whole_headers(files)


@pytest.mark.parametrize(
    ("folder", "count"),
    [("fidelity/dcm_qa_philips_vanderbilt/In", 90), ("dcm_qa_nih/In", 90)],
)
def test_real_series_read_at_rest_equal_whole_headers(
    folder: str, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real scanners' series (read in order, so templates are used): each file at rest,
    woken, equals the file read whole."""
    taken: list[int] = []

    def counted(data: bytes, pos: int, template: _Template, first: int) -> int:
        after = _matching_run(data, pos, template, first)
        taken.append(after - first)
        return after

    monkeypatch.setattr(files_module, "_matching_run", counted)
    root = locate_testdata() / folder
    paths = list(iter_files(root))[:count]
    assert paths, f"no files below {root}"
    reader = HeaderReader()
    for path in paths:
        at_rest, whole = reader.read(path, root), read_instance(path, root)
        if not isinstance(whole, InstanceFile):
            assert at_rest == whole
            continue
        assert isinstance(at_rest, InstanceFile)
        assert dict(at_rest.signatures) == dict(whole.signatures), path.name
        with awake([at_rest]):
            assert dataset_to_json(at_rest.dataset) == dataset_to_json(whole.dataset), path.name
    assert sum(taken) > 10 * len(paths), "templates were hardly used"


def test_shared_private_elements_are_decoded_once_for_the_series(tmp_path: Path) -> None:
    """A vendor field the series' files share is decoded once (vendor fields are read for
    every file while frames are built), and reads as pydicom reads it."""
    series, study = generate_uid(), generate_uid()
    for n in range(1, 4):
        _write(tmp_path / f"{n}.dcm", series, study, n)
    _, files = _read_all(tmp_path)
    private = BaseTag(0x00291001)
    with awake(files):
        elements = [item.dataset._dict[private] for item in files]
        assert all(type(e) is DataElement for e in elements)  # decoded before anyone reads it
        assert elements[1] is elements[0] and elements[2] is elements[0]
        for item in files:
            assert private_value(item.dataset, (0x0029, 0x1001)) == "private, shared"
    _assert_whole_headers(files)


@pytest.mark.parametrize("folder", ["fidelity/dcm_qa_philips_vanderbilt/In", "dcm_qa_nih/In"])
def test_tags_outside_a_set_are_the_woken_headers_tags(folder: str) -> None:
    """What instance attributes are placed from: each file's tags outside its series'
    common ones, found from its own elements and its reference's."""
    root = locate_testdata() / folder
    reader = HeaderReader()
    items = [reader.read(p, root) for p in list(iter_files(root))[:120]]
    files = [i for i in items if isinstance(i, InstanceFile)]
    grouped, _ = group_instances(files, place=False)
    compared = 0
    for study in grouped:
        for series in study.series:
            common = _common_tags(series.files)
            for excluded in (common, frozenset()):
                with awake(series.files):
                    expected = [
                        {t for t in map(int, f.dataset.keys()) if t not in excluded}
                        - {0x7FE00010, 0x7FE00008, 0x7FE00009}
                        for f in series.files
                    ]
                got = list(tags_outside(series.files, excluded))
                assert [set(g) for g in got] == expected
                assert all(len(g) == len(set(g)) for g in got)
                compared += len(got)
    assert compared > 100


def test_tags_outside_leave_out_what_a_file_lacks(tmp_path: Path) -> None:
    series, study = generate_uid(), generate_uid()
    for n in range(1, 4):
        _write(tmp_path / f"{n}.dcm", series, study, n, StationName=None if n == 3 else "MR1")
    _, files = _read_all(tmp_path)
    station = 0x00081010
    got = list(tags_outside(files, frozenset()))
    assert [station in tags for tags in got] == [True, True, False]
    with awake(files):
        assert [set(tags) for tags in got] == [
            {t for t in map(int, f.dataset.keys()) if t != 0x7FE00010} for f in files
        ]
