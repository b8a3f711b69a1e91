"""Header reading: the fast path gives what pydicom's dcmread gives, and sharing is exact."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import pydicom
import pytest
from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.dicom.files import (
    _PIXEL_TAG_SET,
    HeaderReader,
    InstanceFile,
    KnownSequences,
    _decode_plain,
    _NotPlainError,
    _parse_explicit_little,
    _read_header,
    _read_items,
    _sequence,
    awake,
    iter_files,
)
from shared.dicom.json_model import dataset_to_json
from tests.conformance.cases import locate_testdata
from tests.unit.test_pixels import shipped

_NAMES = [
    "CT_small.dcm",  # explicit VR little endian: the fast path
    "MR_small.dcm",
    "rtplan.dcm",  # nested sequences
    "JPEG2000.dcm",  # encapsulated pixel data: pydicom reads it
    "image_dfl.dcm",  # deflated: pydicom reads it
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
]


def _same_elements(got: Dataset, expected: Dataset) -> None:
    assert list(got._dict) == list(expected._dict)
    for tag, elem in expected._dict.items():
        mine = got._dict[tag]
        assert type(mine) is type(elem), tag
        if isinstance(elem, RawDataElement):
            assert isinstance(mine, RawDataElement)
            if mine.value is None and int(tag) in _PIXEL_TAG_SET:
                # the fast path defers pixel data of every size: the same element, its
                # value read from the file by its offset
                assert tuple(mine)[:3] + tuple(mine)[4:] == tuple(elem)[:3] + tuple(elem)[4:]
                assert got[tag].value == expected[tag].value, tag
            else:
                assert tuple(mine) == tuple(elem), tag
        else:
            assert isinstance(mine, DataElement)
            assert (mine.VR, mine.is_undefined_length, repr(mine.value)) == (
                elem.VR,
                elem.is_undefined_length,
                repr(elem.value),
            ), tag


@pytest.mark.parametrize("name", _NAMES)
def test_read_header_equals_dcmread(name: str) -> None:
    path = shipped(name)
    expected = pydicom.dcmread(path, defer_size="64 KB")
    got = _read_header(path)
    assert got is not None
    _same_elements(got, expected)
    for attribute in ("preamble", "is_implicit_VR", "is_little_endian", "filename", "timestamp"):
        assert getattr(got, attribute) == getattr(expected, attribute), attribute
    assert got.original_character_set == expected.original_character_set
    assert got.file_meta == expected.file_meta
    _same_elements(got.file_meta, expected.file_meta)  # raw as pydicom leaves them raw
    state = {k: v for k, v in vars(got.file_meta).items() if k != "_dict"}
    assert state == {k: v for k, v in vars(expected.file_meta).items() if k != "_dict"}
    assert type(got.file_meta) is FileMetaDataset
    assert dataset_to_json(got) == dataset_to_json(expected)


def test_the_fast_path_holds_no_pixel_data_however_small() -> None:
    """CT_small's 32 KiB of pixel data (under the 64 KB deferral size) stays in the file;
    the value is read from there, by the offset kept, when asked for."""
    path = shipped("CT_small.dcm")
    got = _parse_explicit_little(path.read_bytes(), path)
    elem = got.get_item(0x7FE00010, keep_deferred=True)
    assert isinstance(elem, RawDataElement)
    assert elem.value is None and 0 < elem.length < 65536
    expected = pydicom.dcmread(path).PixelData
    assert path.read_bytes()[elem.value_tell : elem.value_tell + elem.length] == expected
    assert got.PixelData == expected


def test_the_fast_path_reads_plain_explicit_little_endian_files_only() -> None:
    plain = shipped("CT_small.dcm")
    _parse_explicit_little(plain.read_bytes(), plain)  # does not raise
    for name in ("JPEG2000.dcm", "image_dfl.dcm", "MR_small_implicit.dcm"):
        other = shipped(name)
        with pytest.raises(_NotPlainError):
            _parse_explicit_little(other.read_bytes(), other)


def _series_with_sequences(folder: Path, count: int, differ_at: int) -> None:
    """``count`` files of one series, each with an undefined-length sequence; the file
    ``differ_at`` has a different value in it."""
    series, study = generate_uid(), generate_uid()
    for n in range(count):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = n + 1
        item = Dataset()
        item.CodeValue = "X" if n != differ_at else "Y"
        item.CodeMeaning = "a code"
        ds.ProcedureCodeSequence = Sequence([item])
        ds["ProcedureCodeSequence"].is_undefined_length = True
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{n:02d}.dcm", enforce_file_format=True)


def test_a_sequence_read_again_is_shared_and_decodes_the_same(tmp_path: Path) -> None:
    _series_with_sequences(tmp_path, 4, differ_at=2)
    reader = HeaderReader()
    files = [reader.read(p, tmp_path) for p in iter_files(tmp_path)]
    assert all(isinstance(f, InstanceFile) for f in files)
    items = [f for f in files if isinstance(f, InstanceFile)]
    tag = BaseTag(0x00081032)
    elements = [f.dataset._dict.get(tag) for f in items]
    assert elements[0] is None and elements[1] is None  # shared with the reference
    assert isinstance(elements[2], DataElement)  # different: the file's own
    # after a different one: the series' template (its second file) still has the
    # reference's bytes, so the reference's sequence is taken again and shared
    assert elements[3] is None
    for item in items:
        with awake([item]):
            woken = dataset_to_json(item.dataset)
            assert item.dataset[tag].is_undefined_length
        assert woken == dataset_to_json(pydicom.dcmread(item.path)), item.relative_path


def test_known_sequences_need_the_same_bytes_and_character_set(tmp_path: Path) -> None:
    _series_with_sequences(tmp_path, 2, differ_at=-1)
    first, second = sorted(tmp_path.iterdir())
    known: KnownSequences = {}
    tag = BaseTag(0x00081032)
    a = _read_header(first, known)
    b = _read_header(second, known)
    assert a is not None and b is not None
    assert a._dict[tag] is b._dict[tag]  # same bytes: one parsed sequence
    known[0x00081032].encoding = "iso_ir_192"  # as if read with another character set
    c = _read_header(second, known)
    assert c is not None and c._dict[tag] is not b._dict[tag]


_ITEM_ATTRIBUTES = (
    "is_undefined_length_sequence_item",
    "seq_item_tell",
    "file_tell",
    "_read_implicit",
    "_read_little",
    "_read_charset",
    "_parent_encoding",
)


def _same_sequence(got: Sequence, expected: Sequence, where: str) -> None:
    """Item for item, attribute for attribute, element for element (raw as raw)."""
    assert got.is_undefined_length == expected.is_undefined_length, where
    assert len(got) == len(expected), where
    for n, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        here = f"{where}[{n}]"
        for attribute in _ITEM_ATTRIBUTES:
            assert getattr(mine, attribute, None) == getattr(theirs, attribute, None), (
                here,
                attribute,
            )
        state = {k: v for k, v in vars(mine).items() if k != "_dict"}
        assert state == {k: v for k, v in vars(theirs).items() if k != "_dict"}, here
        assert list(mine._dict) == list(theirs._dict), here
        for tag, elem in theirs._dict.items():
            other = mine._dict[tag]
            assert type(other) is type(elem), (here, tag)
            if isinstance(elem, RawDataElement):
                assert isinstance(other, RawDataElement)
                assert tuple(other) == tuple(elem), (here, tag)
            else:
                assert isinstance(other, DataElement)
                assert (other.VR, other.file_tell, other.is_undefined_length) == (
                    elem.VR,
                    elem.file_tell,
                    elem.is_undefined_length,
                ), (here, tag)
                _same_sequence(other.value, elem.value, f"{here}{tag}")


def _pydicom_sequence(data: bytes, start: int, encoding: Any) -> tuple[Sequence, int]:
    fp = io.BytesIO(data)
    fp.seek(start)
    sequence = read_sequence(fp, False, True, 0xFFFFFFFF, encoding)
    return sequence, fp.tell()


def _empty_item(undefined_length: bool) -> Dataset:
    item = Dataset()
    item.is_undefined_length_sequence_item = undefined_length
    return item


def _sequences_file(path: Path, empty_item: bool | None = None) -> None:
    """``empty_item``: a third item, empty, of undefined length (True) or length 0."""
    inner = Dataset()
    inner.CodeValue = "C1"
    inner.CodeMeaning = "nested"
    first = Dataset()
    first.SpecificCharacterSet = "ISO_IR 192"  # an item's own character set
    first.CodeMeaning = "Größe"
    first.ConceptCodeSequence = Sequence([inner])
    first["ConceptCodeSequence"].is_undefined_length = True
    first.is_undefined_length_sequence_item = True
    second = Dataset()
    second.CodeValue = "C2"
    second.add_new(0x00091001, "LO", "private in an item")
    second.is_undefined_length_sequence_item = False  # its length given
    items = [first, second, *([] if empty_item is None else [_empty_item(empty_item)])]
    _save_with_procedure_codes(path, items)


def _save_with_procedure_codes(path: Path, items: list[Dataset]) -> None:
    """An instance whose ProcedureCodeSequence (undefined length) holds ``items``."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ProcedureCodeSequence = Sequence(items)
    ds["ProcedureCodeSequence"].is_undefined_length = True
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_sequences_are_read_as_pydicom_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "seq.dcm"
    _sequences_file(path)
    data = path.read_bytes()
    start = cast(int, pydicom.dcmread(path)["ProcedureCodeSequence"].file_tell)
    got, end = _read_items(data, start, default_encoding)
    expected, expected_end = _pydicom_sequence(data, start, default_encoding)
    assert end == expected_end
    _same_sequence(got, expected, "ProcedureCodeSequence")
    assert got[0].CodeMeaning == "Größe" and got[0].ConceptCodeSequence[0].CodeValue == "C1"
    header = _read_header(path)
    assert header is not None
    assert dataset_to_json(header) == dataset_to_json(pydicom.dcmread(path))


@pytest.mark.parametrize("undefined_length", [True, False])
def test_an_empty_item_is_left_to_pydicom(tmp_path: Path, undefined_length: bool) -> None:
    """pydicom may take an empty item for implicit VR: it reads such a sequence itself."""
    path = tmp_path / "seq.dcm"
    _sequences_file(path, empty_item=undefined_length)
    data = path.read_bytes()
    start = cast(int, pydicom.dcmread(path)["ProcedureCodeSequence"].file_tell)
    with pytest.raises(_NotPlainError):
        _read_items(data, start, default_encoding)
    header = _read_header(path)
    assert header is not None
    _same_elements(header, pydicom.dcmread(path, defer_size="64 KB"))


def test_real_sequences_are_read_as_pydicom_reads_them() -> None:
    """Philips' per-file private sequences, nested sequences of the other vendors."""
    root = locate_testdata()
    compared = 0
    for folder in ("fidelity/dcm_qa_philips_vanderbilt/In", "dcm_qa_nih/In", "dcm_qa_enh/In"):
        for path in list(iter_files(root / folder))[:40]:
            dataset = _read_header(path)
            if dataset is None or dataset.is_implicit_VR or not dataset.is_little_endian:
                continue
            data = path.read_bytes()
            charset = dataset.original_character_set or dataset._character_set
            encoding = charset if isinstance(charset, str) else list(charset)
            for tag, elem in dataset._dict.items():
                if isinstance(elem, DataElement) and elem.VR == "SQ" and elem.is_undefined_length:
                    start = cast(int, elem.file_tell)
                    got, end = _read_items(data, start, encoding)
                    expected, expected_end = _pydicom_sequence(data, start, encoding)
                    assert end == expected_end, (path.name, tag)
                    _same_sequence(got, expected, f"{path.name}{tag}")
                    compared += 1
    assert compared > 100


def test_a_known_sequence_is_taken_only_through_its_delimiter(tmp_path: Path) -> None:
    """A later file whose sequence starts with the known one's items and has one more."""
    paths = []
    for count in (1, 2):
        items = []
        for n in range(count):
            item = Dataset()
            item.CodeValue = f"C{n}"
            items.append(item)
        paths.append(tmp_path / f"{count}.dcm")
        _save_with_procedure_codes(paths[-1], items)
    known: KnownSequences = {}
    first = _read_header(paths[0], known)
    assert first is not None and 0x00081032 in known
    data = paths[1].read_bytes()
    start = cast(int, pydicom.dcmread(paths[1])["ProcedureCodeSequence"].file_tell)
    element, end = _sequence(data, io.BytesIO(data), start, 0x00081032, default_encoding, known)
    assert element is not first._dict[BaseTag(0x00081032)]
    assert [i.CodeValue for i in element.value] == ["C0", "C1"]
    assert end == _pydicom_sequence(data, start, default_encoding)[1]


def _raw_uid(value: bytes, vr: str | None = "UI", tag: int = 0x00080018) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 1234, vr is None, True)


def _element_state(elem: DataElement) -> dict[str, Any]:
    state = dict(vars(elem))
    state["value_type"] = type(elem.value)
    return state


@pytest.mark.parametrize(
    "value",
    [
        b"1.2.840.10008.5.1.4.1.1.2",
        b"1.2.3\0",  # padded to an even length with a null, as the standard says
        b"1.2.3 ",  # or with a space, as some writers do
        b"0.10.200",
        b"1." + b"2" * 62,  # 64 characters, the most allowed
    ],
)
def test_a_plain_uid_is_decoded_as_pydicom_decodes_it(value: bytes) -> None:
    raw = _raw_uid(value)
    elements: dict[BaseTag, Any] = {raw.tag: raw}
    _decode_plain(elements, [raw.tag])
    got = elements[raw.tag]
    assert type(got) is DataElement
    assert _element_state(got) == _element_state(convert_raw_data_element(raw))


@pytest.mark.parametrize(
    "value",
    [
        b"1.02.3",  # a leading zero: pydicom warns, so pydicom decodes it
        b"1..2",
        b".1.2",
        b"1.2.",
        b"1.2.a",
        b"1.2\\1.3",  # two values
        b"1." + b"2" * 63,  # 65 characters
        b"",
    ],
)
def test_a_uid_pydicom_warns_about_is_left_to_it(value: bytes) -> None:
    raw = _raw_uid(value)
    elements: dict[BaseTag, Any] = {raw.tag: raw}
    _decode_plain(elements, [raw.tag])
    assert elements[raw.tag] is raw


def test_a_group_length_is_decoded_as_pydicom_decodes_it() -> None:
    length = RawDataElement(BaseTag(0x00020000), "UL", 4, b"\xc4\x00\x00\x00", 140, False, True)
    elements: dict[BaseTag, Any] = {length.tag: length}
    _decode_plain(elements, [length.tag])
    got = elements[length.tag]
    assert type(got) is DataElement and got.value == 196
    assert _element_state(got) == _element_state(convert_raw_data_element(length))


def test_other_ul_values_are_left_to_pydicom() -> None:
    two = RawDataElement(BaseTag(0x00020000), "UL", 8, bytes(8), 140, False, True)
    big = RawDataElement(BaseTag(0x00020000), "UL", 4, bytes(4), 140, False, False)
    for raw in (two, big):
        elements: dict[BaseTag, Any] = {raw.tag: raw}
        _decode_plain(elements, [raw.tag])
        assert elements[raw.tag] is raw


def test_only_explicit_ui_elements_are_decoded() -> None:
    implicit = _raw_uid(b"1.2.3", vr=None)
    other_vr = _raw_uid(b"1.2.3", vr="LO", tag=0x00081030)
    elements: dict[BaseTag, Any] = {implicit.tag: implicit, other_vr.tag: other_vr}
    _decode_plain(elements, list(elements))
    assert elements[implicit.tag] is implicit and elements[other_vr.tag] is other_vr


def test_read_uids_are_pydicoms_on_real_files() -> None:
    """The UIDs a read decodes (four in the data set, two in the meta information) are
    the elements pydicom makes of them, on files of three vendors."""
    root = locate_testdata()
    if root is None:
        pytest.skip("../shared/testdata is not there")
    folders = ["dcm_qa_nih/In", "fidelity/dcm_qa_polar/In", "fidelity/dcm_qa_philips_vanderbilt/In"]
    reader, compared = HeaderReader(), 0
    for folder in folders:
        for path in [p for p in iter_files(root / folder) if p.suffix != ".txt"][:40]:
            item = reader.read(path, root)
            assert isinstance(item, InstanceFile), path
            expected = pydicom.dcmread(path, stop_before_pixels=True)
            for got_ds, expected_ds in (
                (item.dataset, expected),
                (item.dataset.file_meta, expected.file_meta),
            ):
                for tag, elem in got_ds._dict.items():
                    if type(elem) is DataElement and elem.VR in ("UI", "UL"):
                        assert _element_state(elem) == _element_state(expected_ds[tag]), path
                        compared += 1
    assert compared >= 120 * 6


def test_uids_are_left_to_pydicom_when_its_hooks_are_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydicom.hooks import hooks, raw_element_value

    seen: list[int] = []

    def counting(raw: RawDataElement, data: dict[str, Any], **kwargs: Any) -> None:
        seen.append(int(raw.tag))
        raw_element_value(raw, data, **kwargs)

    monkeypatch.setattr(hooks, "raw_element_value", counting)
    item = HeaderReader().read(shipped("CT_small.dcm"), shipped("CT_small.dcm").parent)
    assert isinstance(item, InstanceFile)
    assert {0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00020010} <= set(seen)


def test_datasets_are_made_as_pydicom_makes_them(tmp_path: Path) -> None:
    """Items are made from a template of a Dataset's attributes (no __init__): the same
    attributes and values as pydicom's (their own character set too), none of their
    dictionaries shared."""
    from shared.dicom.files import _dataset_template

    assert _dataset_template(Dataset) is not None  # this pydicom: the template is used
    assert _dataset_template(FileMetaDataset) is not None
    items = []
    for charset in ("ISO_IR 192", None, "ISO_IR 100"):
        item = Dataset()
        if charset is not None:
            item.SpecificCharacterSet = charset
        item.CodeValue = "C"
        item.is_undefined_length_sequence_item = charset is None or "192" in charset
        items.append(item)
    path = tmp_path / "charsets.dcm"
    _save_with_procedure_codes(path, items)
    data = path.read_bytes()
    start = cast(int, pydicom.dcmread(path)["ProcedureCodeSequence"].file_tell)
    got, _ = _read_items(data, start, ["iso8859", "iso_ir_126"])
    expected, _ = _pydicom_sequence(data, start, ["iso8859", "iso_ir_126"])
    _same_sequence(got, expected, "ProcedureCodeSequence")  # every attribute of each item
    assert [item._read_charset for item in got] == [
        ["UTF8"],
        ["iso8859", "iso_ir_126"],
        ["latin_1"],
    ]
    for key, value in vars(got[0]).items():
        if isinstance(value, dict | list) and key not in ("_read_charset", "_parent_encoding"):
            assert value is not vars(got[1])[key], key
