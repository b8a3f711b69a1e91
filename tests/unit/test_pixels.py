# mypy: disallow-untyped-calls=False
"""Pixel decoding and value handling, on files pydicom ships and on generated series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from shared.operator.parser import parse_folder
from shared.samples import write_ct_series
from shared.volumes.convert import ConversionOptions

MR_SMALL_SYNTAXES = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


def shipped(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom does not ship {name}")
    return Path(str(path))


def convert_one(
    tmp_path: Path, files: list[Path], fmt: str = "nii"
) -> tuple[np.ndarray, sitk.Image]:
    src = tmp_path / "in"
    src.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, src / f.name)
    out = tmp_path / "out"
    metadata = parse_folder(src, out, ConversionOptions(image_format=fmt))  # type: ignore[arg-type]
    images = metadata.series_images()
    assert len(images) == 1, metadata.model_dump()
    image = sitk.ReadImage(str(out / next(iter(images.values()))))
    return sitk.GetArrayFromImage(image), image


def test_every_transfer_syntax_decodes_to_the_same_voxels(tmp_path: Path) -> None:
    reference, _ = convert_one(tmp_path / "ref", [shipped("MR_small.dcm")])
    expected = pydicom.dcmread(shipped("MR_small.dcm")).pixel_array
    assert np.array_equal(reference[0], expected)
    for name in MR_SMALL_SYNTAXES:
        voxels, _ = convert_one(tmp_path / name, [shipped(name)])
        assert np.array_equal(voxels, reference), name


def ct(tmp_path: Path, slices: int = 4, **changes: object) -> list[Path]:
    paths = write_ct_series(tmp_path / "ct", slices=slices, size=16, seed=3)
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


def stored(paths: list[Path]) -> np.ndarray:
    datasets = sorted(
        (pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2])
    )
    return np.stack([d.pixel_array.astype(np.int64) for d in datasets])


def test_integer_rescale_keeps_an_integer_type_that_fits(tmp_path: Path) -> None:
    paths = ct(tmp_path)
    voxels, _ = convert_one(tmp_path, paths)
    assert voxels.dtype == np.int16  # 12-bit unsigned - 1024 fits int16, not uint16
    assert np.array_equal(voxels, stored(paths) - 1024)


def test_fractional_rescale_gives_float32(tmp_path: Path) -> None:
    paths = ct(tmp_path, RescaleSlope="0.5", RescaleIntercept="-10.25")
    voxels, _ = convert_one(tmp_path, paths)
    assert voxels.dtype == np.float32
    assert np.allclose(voxels, stored(paths) * 0.5 - 10.25)


def test_large_integer_rescale_widens_the_type(tmp_path: Path) -> None:
    paths = ct(tmp_path, RescaleSlope="1000", RescaleIntercept="0")
    voxels, _ = convert_one(tmp_path, paths)
    assert voxels.dtype == np.uint32  # the smallest type holding 0 .. 4095000
    assert np.array_equal(voxels, stored(paths) * 1000)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    paths = ct(tmp_path, PhotometricInterpretation="MONOCHROME1")
    voxels, _ = convert_one(tmp_path, paths)
    assert np.array_equal(voxels, (4095 - stored(paths)) - 1024)


def test_bits_above_bits_stored_are_ignored(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=3, size=16, seed=3)
    expected = stored(paths) - 1024
    for path in paths:  # put garbage (e.g. an old overlay) in the 4 unused high bits
        ds = pydicom.dcmread(path)
        ds.PixelData = (ds.pixel_array | 0xF000).astype(np.uint16).tobytes()
        ds.save_as(path)
    voxels, _ = convert_one(tmp_path, paths)
    assert np.array_equal(voxels, expected)


@pytest.mark.parametrize("fmt", ["mhd", "nii", "nii.gz"])
def test_geometry_is_the_same_in_every_format(tmp_path: Path, fmt: str) -> None:
    paths = ct(tmp_path, slices=5)
    voxels, image = convert_one(tmp_path, paths, fmt)
    first = min((pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2]))
    assert image.GetOrigin() == pytest.approx(
        [float(v) for v in first.ImagePositionPatient], abs=1e-4
    )
    spacing = [float(v) for v in first.PixelSpacing]
    assert image.GetSpacing() == pytest.approx((spacing[1], spacing[0], 1.0), abs=1e-5)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1), abs=1e-6)
    assert voxels.shape == (5, 16, 16)


@pytest.mark.parametrize(("fmt", "size"), [("nii", 16), ("mhd", 16), ("nii", 300), ("mhd", 300)])
def test_truncated_pixel_data_is_reported_and_leaves_no_file(
    tmp_path: Path, fmt: str, size: int
) -> None:
    """Pixel data read with the header (small) or from the file at its offset (large)."""
    paths = write_ct_series(tmp_path / "ct", slices=6, size=size, seed=3)
    ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    cut = ordered[3]
    cut.write_bytes(cut.read_bytes()[:-100])  # its last 50 pixels are missing
    src = tmp_path / "ct"
    out = tmp_path / "out"
    metadata = parse_folder(src, out, ConversionOptions(image_format=fmt))  # type: ignore[arg-type]
    [series] = [se for st in metadata.studies for se in st.series]
    assert series.volumes == []
    [refusal] = series.notConverted
    assert refusal.code == "unreadable_pixel_data"
    assert refusal.reason in (
        f"{cut.name}: pixel data is truncated",
        f"pixel data of {cut.name} cannot be decoded: ValueError: buffer is smaller than "
        "requested size",
    )
    assert sorted(p.name for p in out.iterdir()) == []  # nothing partial left behind
