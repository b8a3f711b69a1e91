"""A large file's header parsed from its first bytes: the same dataset as the whole file's.

A file of ``_HEAD_FIRST_FROM`` bytes or more is parsed from its first ``_HEAD_BYTES``
when every element but a deferred value that ends the file lies there; anything else (an
element after the pixel data, a header longer than the bytes read, a sequence or a
deferred value across them) is parsed from the whole file. Each case is compared with
pydicom's ``dcmread`` and with which bytes were parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.dicom import files as files_module
from shared.dicom.files import (
    _HEAD_BYTES,
    _HEAD_FIRST_FROM,
    HeaderReader,
    InstanceFile,
    _read_header,
    awake,
)
from shared.dicom.json_model import dataset_to_json
from tests.unit.test_header_reading import _same_elements

_SIDE = 400  # 400 x 400 x 2 bytes: 312.5 KiB of pixel data, a file above _HEAD_FIRST_FROM


def _instance(series: str = "", study: str = "") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = "CT"
    ds.InstitutionName = "Hôpital"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = _SIDE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _with_pixels(ds: Dataset, seed: int = 0) -> Dataset:
    pixels = np.random.default_rng(seed).integers(0, 4096, (_SIDE, _SIDE), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size >= _HEAD_FIRST_FROM
    return path


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int | None]]]:
    """The (bytes given, file size given) of each parse of a file's header."""
    calls: list[tuple[int, int | None]] = []
    parse: Callable[..., Any] = files_module._parse_explicit_little

    def spy(data: bytes, *args: Any) -> Any:
        size = args[4] if len(args) > 4 else None
        if not calls or calls[-1] != (len(data), size):  # not a wrong template's second go
            calls.append((len(data), size))
        return parse(data, *args)

    monkeypatch.setattr(files_module, "_parse_explicit_little", spy)
    yield calls


def _same_as_pydicom(path: Path) -> None:
    expected = pydicom.dcmread(path, defer_size="64 KB")
    got = _read_header(path)
    assert got is not None
    _same_elements(got, expected)
    assert got.file_meta == expected.file_meta
    assert dataset_to_json(got) == dataset_to_json(expected)
    assert got.PixelData == expected.PixelData  # read by its offset, from the file


def test_a_large_file_is_parsed_from_its_start(
    tmp_path: Path, parses: list[tuple[int, int | None]]
) -> None:
    path = _save(_with_pixels(_instance()), tmp_path / "ct.dcm")
    _same_as_pydicom(path)
    assert parses == [(_HEAD_BYTES, path.stat().st_size)]


def _element_after_the_pixels(ds: Dataset) -> None:
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 16)  # Data Set Trailing Padding


def _header_longer_than_the_start(ds: Dataset) -> None:
    for n in range(3):  # each under the 64 KB deferral size, together over _HEAD_BYTES
        ds.add_new(0x00091010 + n, "OB", bytes([n]) * 60_000)
    ds.add_new(0x00090010, "LO", "ACME")


def _sequence_across_the_start(ds: Dataset) -> None:
    items = []
    for n in range(40):
        item = Dataset()
        item.CodeValue = f"C{n}"
        item.TextValue = "x" * 4_000  # UT: no maximum length
        items.append(item)
    ds.ProcedureCodeSequence = Sequence(items)
    ds["ProcedureCodeSequence"].is_undefined_length = True


def _deferred_value_before_the_pixels(ds: Dataset) -> None:
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091010, "OB", b"\1" * 150_000)  # deferred, and past the start


@pytest.mark.parametrize(
    "change",
    [
        _element_after_the_pixels,
        _header_longer_than_the_start,
        _sequence_across_the_start,
        _deferred_value_before_the_pixels,
    ],
)
def test_what_the_start_does_not_hold_is_parsed_from_the_whole_file(
    tmp_path: Path, parses: list[tuple[int, int | None]], change: Callable[[Dataset], None]
) -> None:
    ds = _with_pixels(_instance())
    change(ds)
    path = _save(ds, tmp_path / "ct.dcm")
    _same_as_pydicom(path)
    size = path.stat().st_size
    assert parses == [(_HEAD_BYTES, size), (size, None)]


def test_smaller_files_are_read_whole(tmp_path: Path, parses: list[tuple[int, int | None]]) -> None:
    ds = _instance()
    ds.PixelData = b"\0\0" * (_HEAD_FIRST_FROM // 2 - 2_000)  # just under, with the header
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "small.dcm"
    ds.save_as(path, enforce_file_format=True)
    size = path.stat().st_size
    assert size < _HEAD_FIRST_FROM
    assert _read_header(path) is not None
    assert parses == [(size, None)]


def test_a_series_of_large_files_read_at_rest_wakes_as_read_whole(tmp_path: Path) -> None:
    """Through a HeaderReader (templates from the start of a file, headers at rest): each
    file wakes to what pydicom reads."""
    series, study = generate_uid(), generate_uid()
    paths = []
    for n in range(4):
        ds = _with_pixels(_instance(series, study), seed=n)
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [0, 0, n]
        if n == 2:
            _element_after_the_pixels(ds)
        paths.append(_save(ds, tmp_path / f"{n}.dcm"))
    reader = HeaderReader()
    read = [reader.read(p, tmp_path) for p in paths]
    assert all(isinstance(item, InstanceFile) for item in read)
    instances = [item for item in read if isinstance(item, InstanceFile)]
    with awake(instances):
        for item, path in zip(instances, paths, strict=True):
            expected = pydicom.dcmread(path, defer_size="64 KB")
            assert dataset_to_json(item.dataset) == dataset_to_json(expected), path.name
            assert (0xFFFC, 0xFFFC) in item.dataset or path.name != "2.dcm"


_PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OW"  # (7FE0,0010), OW: a 12-byte element header


def _pixel_data_at(tmp_path: Path, at: int) -> Path:
    """A file whose Pixel Data element header starts ``at`` bytes into the file, after
    private values of under 64 KB (never deferred, so they must lie in the bytes parsed)."""
    ds = _with_pixels(_instance())
    ds.add_new(0x00090010, "LO", "ACME")
    for n in range(2):
        ds.add_new(0x00091010 + n, "OB", bytes([n + 1]) * 60_000)
    path = tmp_path / f"at-{at}.dcm"
    filler = 10_000
    for _ in range(2):  # measure where the header lands, then move it
        ds.add_new(0x00091012, "OB", b"\3" * filler)
        _save(ds, path)
        found = path.read_bytes().find(_PIXEL_DATA_HEADER)
        filler += at - found
    assert path.read_bytes().find(_PIXEL_DATA_HEADER) == at
    return path


@pytest.mark.parametrize("offset", range(-14, 16, 2))
def test_pixel_data_around_the_end_of_the_start(
    tmp_path: Path, parses: list[tuple[int, int | None]], offset: int
) -> None:
    """Element boundaries swept across the end of the bytes read first: the start is
    enough only when it holds the whole Pixel Data element header (the value before it
    is then whole too); otherwise the whole file is parsed. Every case reads as pydicom."""
    at = _HEAD_BYTES + offset
    path = _pixel_data_at(tmp_path, at)
    _same_as_pydicom(path)
    size = path.stat().st_size
    if at + 12 <= _HEAD_BYTES:
        assert parses == [(_HEAD_BYTES, size)]
    else:
        assert parses == [(_HEAD_BYTES, size), (size, None)]
