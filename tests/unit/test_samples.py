"""The synthetic DICOM generators in ``shared.samples`` write valid, deterministic studies."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import ExplicitVRLittleEndian

from shared.samples import (
    BRAIN_STUDY_DESCRIPTION,
    describe,
    write_brain_mr_study,
    write_ct_series,
)

UID_RE = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

EXPECTED_BRAIN_SERIES = {
    "Localizer",
    "T1 SE AX",
    "T2 TSE AX",
    "T2 FLAIR AX",
    "T1 MPRAGE SAG",
    "T1c SE AX post-contrast",
    "T1c SE AX ref",
    "Preliminary report",
}

CT_SLICES = 8
CT_SIZE = 64


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_brain_mr_study(tmp_path_factory.mktemp("brain"), seed=1)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_ct_series(tmp_path_factory.mktemp("ct"), slices=CT_SLICES, size=CT_SIZE, seed=1)


def read(path: Path) -> FileDataset:
    return pydicom.dcmread(path)  # no force: the file must be valid Part 10


def digests(paths: list[Path], root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(UID_RE.match(value))


def by_series(paths: list[Path]) -> dict[str, list[FileDataset]]:
    series: dict[str, list[FileDataset]] = defaultdict(list)
    for path in paths:
        ds = read(path)
        series[str(ds.SeriesInstanceUID)].append(ds)
    return series


def check_stack_geometry(datasets: list[FileDataset]) -> tuple[float, list[int]]:
    """Returns the spacing along the normal and the instance numbers in that order."""
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    assert abs(float(row @ col)) < 1e-6
    normal = np.cross(row, col)
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(list(iop))
    ordered = sorted(
        datasets, key=lambda ds: float(normal @ np.array(ds.ImagePositionPatient, dtype=float))
    )
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ordered])
    steps = np.diff(positions, axis=0)
    spacing = float(np.linalg.norm(steps[0]))
    # every step is the same and lies along the normal: no in-plane shift
    np.testing.assert_allclose(steps, np.tile(spacing * normal, (len(steps), 1)), atol=1e-4)
    return spacing, [int(ds.InstanceNumber) for ds in ordered]


# ------------------------------------------------------------------------------- brain MR


def test_brain_files_are_valid_part10_with_valid_uids(brain: list[Path]) -> None:
    assert len(brain) == 170
    for path in brain:
        ds = read(path)
        assert ds.preamble is not None
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        for keyword in UID_KEYWORDS:
            assert is_valid_uid(str(ds[keyword].value)), (path, keyword)
        if "FrameOfReferenceUID" in ds:
            assert is_valid_uid(str(ds.FrameOfReferenceUID))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            assert str(ds[keyword].value)
        assert ds.StudyDescription == BRAIN_STUDY_DESCRIPTION
        assert re.search("(?i)Brain", ds.StudyDescription)


def test_brain_study_has_the_expected_series(brain: list[Path]) -> None:
    series = by_series(brain)
    descriptions = {str(d[0].SeriesDescription) for d in series.values()}
    assert descriptions == EXPECTED_BRAIN_SERIES
    assert len({str(d[0].StudyInstanceUID) for d in series.values()}) == 1
    numbers = [int(d[0].SeriesNumber) for d in series.values()]
    assert len(set(numbers)) == len(numbers)
    sop_uids = [str(ds.SOPInstanceUID) for d in series.values() for ds in d]
    assert len(set(sop_uids)) == len(sop_uids) == len(brain)
    # one folder per series
    assert len({p.parent for p in brain}) == len(series)
    assert any(p.suffix == "" for p in brain)


def test_brain_images_are_unsigned_16_bit_mr(brain: list[Path]) -> None:
    for path in brain:
        ds = read(path)
        if ds.Modality != "MR":
            continue
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        assert (ds.BitsAllocated, ds.PixelRepresentation, ds.SamplesPerPixel) == (16, 0, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert "RescaleSlope" not in ds
        assert float(ds.EchoTime) > 0 and float(ds.RepetitionTime) > 0
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns)
        assert pixels.max() < 2**ds.BitsStored
        assert pixels.max() > 100  # not blank


def test_brain_series_geometry_advances_along_the_normal(brain: list[Path]) -> None:
    for datasets in by_series(brain).values():
        first = datasets[0]
        if first.Modality != "MR":
            continue
        stacks: dict[tuple[float, ...], list[FileDataset]] = defaultdict(list)
        for ds in datasets:
            stacks[tuple(float(v) for v in ds.ImageOrientationPatient)].append(ds)
        if "LOCALIZER" in first.ImageType:
            assert len(stacks) == 3  # sagittal, coronal, axial
        else:
            assert len(stacks) == 1
        for stack in stacks.values():
            spacing, numbers = check_stack_geometry(stack)
            assert spacing == pytest.approx(float(first.SpacingBetweenSlices))
            assert numbers == sorted(numbers)  # instance numbers follow the normal


def test_t2_has_a_gap_between_slices(brain: list[Path]) -> None:
    t2 = next(d for d in by_series(brain).values() if d[0].SeriesDescription == "T2 TSE AX")
    spacing, _ = check_stack_geometry(t2)
    assert spacing > float(t2[0].SliceThickness)


def test_post_contrast_lesion_enhances(brain: list[Path]) -> None:
    series = by_series(brain)

    def brightest(description: str) -> int:
        datasets = next(d for d in series.values() if d[0].SeriesDescription == description)
        return max(int(ds.pixel_array.max()) for ds in datasets)

    assert brightest("T1c SE AX post-contrast") > brightest("T1 SE AX") + 500


def test_clara_example_rule_picks_exactly_the_post_contrast_t1(brain: list[Path]) -> None:
    """The selection-rule example of the Clara DICOM Parser documentation, by hand."""
    description_re = r"^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*"
    chosen = [
        str(d[0].SeriesDescription)
        for d in by_series(brain).values()
        if re.search("(?i)^MR", d[0].Modality)
        and re.search("(?i)Brain", d[0].StudyDescription)
        and {"ORIGINAL", "PRIMARY"} <= set(d[0].get("ImageType", []))
        and re.search(description_re, d[0].SeriesDescription)
    ]
    assert chosen == ["T1c SE AX post-contrast"]


def test_report_is_a_basic_text_sr_without_pixels(brain: list[Path]) -> None:
    reports = [read(p) for p in brain if read(p).Modality == "SR"]
    assert len(reports) == 1
    sr = reports[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert "PixelData" not in sr
    assert sr.ValueType == "CONTAINER"
    items = list(sr.ContentSequence)
    assert [item.ValueType for item in items] == ["TEXT"]
    assert items[0].TextValue


def test_same_seed_gives_identical_files(brain: list[Path], tmp_path: Path) -> None:
    again = write_brain_mr_study(tmp_path, seed=1)
    root = brain[0].parent.parent
    assert digests(again, tmp_path) == digests(brain, root)


def test_different_seeds_give_different_uids(brain: list[Path], tmp_path: Path) -> None:
    other = write_brain_mr_study(tmp_path, seed=2)

    def uids(paths: list[Path]) -> set[str]:
        found: set[str] = set()
        for path in paths:
            ds = read(path)
            found |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), ds.SOPInstanceUID}
        return found

    assert not uids(brain) & uids(other)


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        write_brain_mr_study(tmp_path, seed=-1)


def test_describe_lists_every_series(brain: list[Path]) -> None:
    text = describe(brain)
    for description in EXPECTED_BRAIN_SERIES:
        assert repr(description) in text


# ------------------------------------------------------------------------------------- CT


def test_ct_files_are_valid_and_sized(ct: list[Path]) -> None:
    assert len(ct) == CT_SLICES
    series_uids = set()
    for path in ct:
        ds = read(path)
        series_uids.add(str(ds.SeriesInstanceUID))
        assert ds.Modality == "CT"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert (ds.Rows, ds.Columns) == (CT_SIZE, CT_SIZE)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert ds.PixelRepresentation == 0
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([5.6, 5.6])  # 358.4 / 64
        for keyword in UID_KEYWORDS:
            assert is_valid_uid(str(ds[keyword].value))
        assert is_valid_uid(str(ds.FrameOfReferenceUID))
    assert len(series_uids) == 1


def test_ct_pixels_are_hounsfield_units(ct: list[Path]) -> None:
    ds = read(ct[0])
    hu = ds.pixel_array.astype(np.int32) - 1024
    assert hu.min() >= -1024 and hu.max() <= 4095 - 1024
    assert hu[0, 0] == pytest.approx(-1000, abs=80)  # air in the corner
    assert np.median(hu[CT_SIZE // 2 - 4 : CT_SIZE // 2 + 4, :]) > -900  # a body in the middle


def test_ct_geometry_and_shuffled_names(ct: list[Path]) -> None:
    datasets = [read(p) for p in ct]
    spacing, numbers = check_stack_geometry(datasets)
    assert spacing == pytest.approx(1.0)
    # instance 1 is the most superior slice: numbers run against the +z normal
    assert numbers == list(range(CT_SLICES, 0, -1))
    by_position = sorted(ct, key=lambda p: float(read(p).ImagePositionPatient[2]))
    assert sorted(ct) != by_position
    assert sorted(ct, reverse=True) != by_position
    assert ct != by_position  # written out of order too


def test_ct_same_seed_is_deterministic(ct: list[Path], tmp_path: Path) -> None:
    again = write_ct_series(tmp_path, slices=CT_SLICES, size=CT_SIZE, seed=1)
    assert digests(again, tmp_path) == digests(ct, ct[0].parent)
    other = write_ct_series(tmp_path / "other", slices=CT_SLICES, size=CT_SIZE, seed=3)
    assert {str(read(p).SeriesInstanceUID) for p in other}.isdisjoint(
        {str(read(p).SeriesInstanceUID) for p in ct}
    )


def test_ct_refuses_empty_series(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_ct_series(tmp_path, slices=0, size=CT_SIZE)
