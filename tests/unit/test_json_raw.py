"""Elements still encoded, to the JSON Model from their bytes: pydicom's result or none."""

from __future__ import annotations

import base64
import struct
from collections import Counter

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from shared.dicom.files import _read_header, iter_files
from shared.dicom.json_model import MAX_INLINE_BINARY, _is_bulk, dataset_to_json, element_to_json
from shared.dicom.json_raw import NOT_PLAIN, PLAIN_VRS, json_from_raw, pydicom_reads_by_default
from tests.conformance.cases import locate_testdata


def _raw(
    vr: str, value: bytes | None, tag: int = 0x00091001, little: bool = True
) -> RawDataElement:
    length = len(value) if value is not None else 2000
    return RawDataElement(BaseTag(tag), vr, length, value, 0, False, little)


def _pydicom_json(raw: RawDataElement) -> object:
    try:
        return element_to_json(convert_raw_data_element(raw))
    except Exception as exc:  # pydicom refuses it: the fast path must not have answered
        return exc


# Values pydicom reads plainly: the fast path must answer, and answer as pydicom does.
_PLAIN = [
    ("DS", b"1.5"),
    ("DS", b" -1.5e-3\\2E3 "),
    ("DS", b"+.5\\7.\\0012"),
    ("DS", b"100.6975189494"),
    ("DS", b"3\0"),
    ("DS", b"1.5\t"),  # pydicom strips whitespace around the whole value
    ("IS", b"12"),
    ("IS", b" -7\\+3\\0012 "),
    ("UI", b"1.2.840.10008.5.1.4.1.1.4\0"),
    ("UI", b"1.2.3\\4.5.6"),
    ("US", struct.pack("<3H", 1, 2, 65535)),
    ("SS", struct.pack("<2h", -5, 7)),
    ("UL", struct.pack("<L", 4_000_000_000)),
    ("SL", struct.pack("<2l", -1, 2)),
    ("FL", struct.pack("<2f", 0.1, -3.25)),
    ("FD", struct.pack("<d", 1 / 3)),
    ("FL", struct.pack("<f", float("inf"))),
    ("OB", bytes(range(10))),
    ("OW", b"\x01\x02\x03\x04"),
    ("OB", b""),
    ("DS", b""),
    ("UI", b""),
]

# Values pydicom reads in its own way (or refuses): the fast path must leave them to it.
_NOT_PLAIN = [
    ("DS", b"1.5\\"),  # an empty value between backslashes
    ("DS", b"1_0"),  # float() reads it; the standard does not allow it
    ("DS", b"nan"),
    ("DS", "١".encode()),  # a digit outside 0-9
    ("DS", b"\0"),
    ("DS", b"1,5"),
    ("IS", b"1.0"),
    ("IS", b"12\\"),
    ("IS", b"x"),
    ("UI", b"1.2 .3"),
    ("UI", b"1.2\\\\3"),
    ("UI", b"1.2.3a"),
    ("US", b"\x01\x02\x03"),  # not a whole number of values
    ("FD", b"\x00" * 12),
    ("LO", b"text"),  # text VRs: pydicom decodes them with the character set
    ("PN", b"Doe^Jane"),
    ("UN", b"\x01\x02"),
    ("SQ", b""),
]


@pytest.mark.parametrize(("vr", "value"), _PLAIN)
def test_plain_values_convert_as_pydicom_converts_them(vr: str, value: bytes) -> None:
    raw = _raw(vr, value)
    got = json_from_raw(raw, MAX_INLINE_BINARY)
    assert got is not NOT_PLAIN
    assert got == _pydicom_json(raw)


@pytest.mark.parametrize(("vr", "value"), _NOT_PLAIN)
def test_other_values_are_left_to_pydicom(vr: str, value: bytes) -> None:
    assert json_from_raw(_raw(vr, value), MAX_INLINE_BINARY) is NOT_PLAIN


def test_what_cannot_be_read_from_the_bytes_alone_is_left_to_pydicom() -> None:
    lut = _raw("US", struct.pack("<3H", 65535, 0, 16), tag=0x00281101)  # pydicom corrects it
    assert json_from_raw(lut, MAX_INLINE_BINARY) is NOT_PLAIN
    big_endian = _raw("US", struct.pack(">H", 5), little=False)
    assert json_from_raw(big_endian, MAX_INLINE_BINARY) is NOT_PLAIN
    deferred = _raw("OB", None)
    assert json_from_raw(deferred, MAX_INLINE_BINARY) is NOT_PLAIN
    implicit = RawDataElement(BaseTag(0x00180050), None, 2, b"3 ", 0, True, True)
    assert json_from_raw(implicit, MAX_INLINE_BINARY) is NOT_PLAIN


def test_long_binary_values_are_left_out_and_short_ones_inline() -> None:
    assert json_from_raw(_raw("OB", bytes(MAX_INLINE_BINARY + 1)), MAX_INLINE_BINARY) is None
    short = bytes(i % 256 for i in range(MAX_INLINE_BINARY))
    assert json_from_raw(_raw("OB", short), MAX_INLINE_BINARY) == {
        "vr": "OB",
        "InlineBinary": base64.b64encode(short).decode(),
    }
    assert (
        element_to_json(convert_raw_data_element(_raw("OB", bytes(MAX_INLINE_BINARY + 1)))) is None
    )


@pytest.mark.parametrize(
    "setting", ["use_DS_decimal", "use_DS_numpy", "use_IS_numpy", "data_element_callback"]
)
def test_pydicom_configured_otherwise_converts_itself(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pydicom_reads_by_default()
    monkeypatch.setattr(
        pydicom_config, setting, (lambda raw, **kw: raw) if "callback" in setting else True
    )
    assert not pydicom_reads_by_default()


def test_instance_attributes_equal_pydicom_and_stay_encoded() -> None:
    ds = Dataset()
    values = {
        0x00180050: ("DS", b"1.25"),
        0x00200013: ("IS", b"7 "),
        0x00281050: ("DS", b"40\\400"),
    }
    for tag, (vr, value) in values.items():
        ds._dict[BaseTag(tag)] = _raw(vr, value, tag)
    got = dataset_to_json(ds, list(values), cache={})
    expected = Dataset()
    for tag, (vr, value) in values.items():
        expected.add(convert_raw_data_element(_raw(vr, value, tag)))
    assert got == dataset_to_json(expected)
    assert all(type(ds._dict[BaseTag(t)]) is RawDataElement for t in values)  # not decoded


def test_every_plain_element_of_the_test_data_converts_as_pydicom_converts_it() -> None:
    """Real files of four vendors: every element the fast path answers for, compared with
    pydicom's conversion (the whole test data was compared when this was written)."""
    root = locate_testdata()
    folders = ["dcm_qa_nih/In", "fidelity/dcm_qa_philips_vanderbilt/In", "fidelity/dcm_qa_polar/In"]
    plain: Counter[str] = Counter()
    for folder in folders:
        for path in list(iter_files(root / folder))[:60]:
            ds = _read_header(path)
            if ds is None:
                continue
            for tag, raw in list(ds._dict.items()):
                if type(raw) is not RawDataElement or _is_bulk(int(tag)):
                    continue
                got = json_from_raw(raw, MAX_INLINE_BINARY)
                if got is NOT_PLAIN:
                    continue
                plain[str(raw.VR)] += 1
                charset = ds.original_character_set or ds._character_set
                expected = element_to_json(convert_raw_data_element(raw, encoding=charset, ds=ds))
                assert got == expected, (path.name, tag)
    assert set(plain) >= {"DS", "IS", "UI", "US", "FL"}, plain
    assert sum(plain.values()) > 10_000
    assert set(plain) <= PLAIN_VRS
