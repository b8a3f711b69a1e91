# mypy: disallow-untyped-calls=False
"""The image writers write what SimpleITK (ITK 5.4) writes for the same image, byte for byte.

SimpleITK is the reference here only: seriesflow writes NIfTI and MetaImage with numpy.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from shared.errors import OutputError
from shared.operator.parser import parse_folder
from shared.samples import write_ct_series
from shared.volumes import nifti
from shared.volumes.convert import ConversionOptions
from shared.volumes.geometry import Geometry
from shared.volumes.metaimage import anatomical_orientation
from shared.volumes.writer import VolumeBuffer, write_image

Voxels = np.ndarray[Any, Any]


def itk_image(voxels: Voxels, geometry: tuple[Any, ...]) -> sitk.Image:
    """What the writer used to write: an ITK image set up as seriesflow set it up."""
    origin, spacing, direction, time_spacing = geometry
    vector = voxels.ndim == 5
    if voxels.shape[0] == 1:
        image = sitk.GetImageFromArray(voxels[0], isVector=vector)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return image
    image = sitk.GetImageFromArray(voxels, isVector=vector)
    d = direction
    image.SetOrigin((*origin, 0.0))
    image.SetSpacing((*spacing, time_spacing))
    image.SetDirection(
        (d[0], d[1], d[2], 0.0, d[3], d[4], d[5], 0.0, d[6], d[7], d[8], 0.0, 0, 0, 0, 1.0)
    )
    return image


def random_geometries(count: int, seed: int) -> list[tuple[Any, ...]]:
    """Rotations, axis permutations (with negative zeros) and obliques near them."""
    rng = np.random.default_rng(seed)
    out: list[tuple[Any, ...]] = [
        ((1.5, -2.25, 3.0), (0.5, 0.6, 2.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 2.5),
        ((-0.0, 0.0, -0.0), (1.0, 1.0, 1.0), (-1.0, -0.0, 0.0, -0.0, -1.0, 0.0, 0.0, 0.0, 1.0), 1),
    ]
    for _ in range(count):
        kind = rng.integers(0, 3)
        if kind == 0:
            q, r = np.linalg.qr(rng.normal(size=(3, 3)))
            d = q * np.sign(np.diag(r))
        else:
            d = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)
            if kind == 2:
                a = float(rng.normal(scale=0.2))
                c, s = math.cos(a), math.sin(a)
                d = d @ np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        d = d * 1.0
        zeros = d == 0
        d[zeros] = rng.choice([0.0, -0.0], size=int(zeros.sum()))
        origin = rng.uniform(-300, 300, 3)
        if rng.random() < 0.3:
            origin[[0, 2]] = rng.choice([0.0, -0.0], size=2)
        spacing = rng.uniform(0.1, 5.0, 3).round(int(rng.integers(1, 8)))
        out.append(
            (
                tuple(float(v) for v in origin),
                tuple(float(v) for v in spacing),
                tuple(float(v) for v in d.ravel()),
                float(rng.uniform(0.5, 3.0)),
            )
        )
    return out


VOLUMES = [
    pytest.param((1, 3, 4, 5), np.int16, id="3d-int16"),
    pytest.param((1, 2, 3, 4), np.uint16, id="3d-uint16"),
    pytest.param((1, 2, 3, 4), np.int8, id="3d-int8"),
    pytest.param((1, 2, 3, 4), np.uint32, id="3d-uint32"),
    pytest.param((1, 2, 3, 4), np.float64, id="3d-float64"),
    pytest.param((2, 3, 4, 5), np.float32, id="4d-float32"),
    pytest.param((1, 3, 4, 5, 3), np.uint8, id="3d-rgb"),
    pytest.param((2, 3, 4, 5, 3), np.uint8, id="4d-rgb"),
]


@pytest.mark.parametrize(("shape", "dtype"), VOLUMES)
@pytest.mark.parametrize("fmt", ["nii", "mhd"])
def test_files_are_the_ones_simpleitk_writes(
    tmp_path: Path, shape: tuple[int, ...], dtype: type, fmt: str
) -> None:
    voxels: Voxels = (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)
    for n, geometry in enumerate(random_geometries(25, seed=len(shape) * 7 + len(fmt))):
        mine, theirs = tmp_path / f"mine{n}.{fmt}", tmp_path / f"itk{n}.{fmt}"
        write_image(mine, voxels, *geometry)
        sitk.WriteImage(itk_image(voxels, geometry), str(theirs))
        if fmt == "nii":
            assert mine.read_bytes() == theirs.read_bytes(), geometry
        else:
            text = theirs.read_text().replace(theirs.with_suffix(".raw").name, "RAW")
            assert mine.read_text().replace(mine.with_suffix(".raw").name, "RAW") == text
            assert mine.with_suffix(".raw").read_bytes() == theirs.with_suffix(".raw").read_bytes()


@pytest.mark.parametrize(("shape", "dtype"), VOLUMES)
def test_nii_gz_holds_the_nii_bytes(tmp_path: Path, shape: tuple[int, ...], dtype: type) -> None:
    voxels: Voxels = (np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(dtype)
    geometry = random_geometries(1, seed=3)[-1]
    write_image(tmp_path / "v.nii.gz", voxels, *geometry)
    write_image(tmp_path / "v.nii", voxels, *geometry)
    assert (
        gzip.decompress((tmp_path / "v.nii.gz").read_bytes()) == (tmp_path / "v.nii").read_bytes()
    )
    back = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    expected = voxels[0] if shape[0] == 1 else voxels
    assert np.array_equal(sitk.GetArrayFromImage(back), expected)
    assert back.GetOrigin()[:3] == pytest.approx(geometry[0], abs=1e-4)


def test_nibabel_reads_the_geometry(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    origin, spacing, direction, _ = random_geometries(1, seed=11)[-1]
    voxels = np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5)
    write_image(tmp_path / "v.nii", voxels, origin, spacing, direction)
    image = nib.load(str(tmp_path / "v.nii"))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected = np.eye(4)
    expected[:3, :3] = lps_to_ras @ np.array(direction).reshape(3, 3) @ np.diag(spacing)
    expected[:3, 3] = lps_to_ras @ np.array(origin)
    assert np.allclose(image.affine, expected, atol=1e-4)
    assert image.header["qform_code"] == 1 and image.header["sform_code"] == 1
    assert np.array_equal(np.asarray(image.dataobj), voxels[0].transpose(2, 1, 0))


def test_buffer_is_zeroed_and_typed(tmp_path: Path) -> None:
    buffer = VolumeBuffer(tmp_path / "v.nii")
    view = buffer((1, 3, 4, 5, 3), np.dtype(np.uint8))
    assert buffer.voxels is view and view.shape == (1, 3, 4, 5, 3) and not view.any()
    with pytest.raises(ValueError, match="no image pixel type"):
        buffer((1, 2, 2, 2), np.dtype(np.int64))


@pytest.mark.parametrize(("shape", "dtype"), VOLUMES)
@pytest.mark.parametrize("fmt", ["nii", "nii.gz", "mhd"])
def test_a_buffer_writes_what_write_image_writes(
    tmp_path: Path, shape: tuple[int, ...], dtype: type, fmt: str
) -> None:
    """Scalar .nii and .mhd buffers are the image file, mapped; the file is the same."""
    geometry = random_geometries(1, seed=5)[-1]
    buffer = VolumeBuffer(tmp_path / "a" / f"v.{fmt}")
    (tmp_path / "a").mkdir()
    voxels = buffer(shape, np.dtype(dtype))
    mapped = fmt == "mhd" or (fmt == "nii" and len(shape) == 4)
    assert (tmp_path / "a" / f"v.{fmt}.partial{'.raw' if fmt == 'mhd' else ''}").exists() == mapped
    voxels[...] = (np.arange(voxels.size) % 251).reshape(shape)
    buffer.write(*geometry)
    (tmp_path / "b").mkdir()
    write_image(tmp_path / "b" / f"v.{fmt}", np.array(voxels), *geometry)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        mine, plain = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert mine == plain or name.endswith(".gz")


@pytest.mark.parametrize("fmt", ["nii", "mhd", "nii.gz"])
def test_frames_put_with_pwrite_are_the_voxels_and_the_file(tmp_path: Path, fmt: str) -> None:
    """put_frame writes a frame into a mapped buffer's file; the mapping sees it, and the
    image is the one write_image writes. A buffer that is not a file says so (False)."""
    geometry = random_geometries(1, seed=7)[-1]
    shape = (2, 3, 4, 5)
    expected = (np.arange(np.prod(shape)) * 37 % 30011 - 15000).astype(np.int16).reshape(shape)
    (tmp_path / "a").mkdir()
    buffer = VolumeBuffer(tmp_path / "a" / f"v.{fmt}")
    voxels = buffer(shape, np.dtype(np.int16))
    mapped = fmt != "nii.gz"
    for index in np.ndindex(*shape[:2]):
        assert buffer.put_frame(index, expected[index].copy()) == mapped
    if not mapped:
        voxels[...] = expected
    assert np.array_equal(voxels, expected)
    assert not buffer.put_frame((0, 0), expected[0, 0].astype(np.int32))  # not its type
    buffer.write(*geometry)
    (tmp_path / "b").mkdir()
    write_image(tmp_path / "b" / f"v.{fmt}", expected, *geometry)
    for path in (tmp_path / "b").iterdir():
        if not path.name.endswith(".gz"):
            assert (tmp_path / "a" / path.name).read_bytes() == path.read_bytes()


def test_a_discarded_buffer_leaves_nothing(tmp_path: Path) -> None:
    for name in ("v.nii", "v.mhd", "v.nii.gz"):
        buffer = VolumeBuffer(tmp_path / name)
        buffer((1, 2, 3, 4), np.dtype(np.int16))[...] = 5
        buffer.discard()
    assert list(tmp_path.iterdir()) == []


def test_anatomical_orientation_codes() -> None:
    assert anatomical_orientation((1, 0, 0, 0, 1, 0, 0, 0, 1)) == "RAI"
    assert anatomical_orientation((-1, 0, 0, 0, -1, 0, 0, 0, -1)) == "LPS"
    assert anatomical_orientation((0, 0, -1, 1, 0, 0, 0, -1, 0)) == "ASL"


def test_geometry_holds_zeros_as_itk_does() -> None:
    held = Geometry.of((-0.0, 1.0, -0.0), (1, 1, 1), (-1, -0.0, 0, -0.0, -1, 0, -0.0, 0, -0.0))
    assert [math.copysign(1, v) for v in held.direction] == [-1, 1, 1, 1, -1, 1, 1, 1, -1]
    assert math.copysign(1, held.origin[0]) == 1  # row 0 has a positive zero term
    assert math.copysign(1, held.origin[2]) == 1


def test_a_failed_write_is_an_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    voxels = np.zeros((1, 2, 3, 4), dtype=np.int16)
    geometry = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for name in ("v.nii", "v.nii.gz", "v.mhd"):
        with pytest.raises(OutputError, match="cannot write"):
            write_image(tmp_path / "missing-folder" / name, voxels, *geometry)
    assert list(tmp_path.iterdir()) == []
    write_image(tmp_path / "v.mhd", voxels, *geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mhd", "v.raw"]


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * 4096 + 17])
def test_gzip_in_pieces_is_one_gzip_stream(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(nifti, "GZIP_CHUNK", 4096)
    data = np.random.default_rng(size).integers(0, 40, size, dtype=np.uint8).tobytes()
    stream = b"".join(nifti.gzip_stream(b"head", memoryview(data)))
    assert gzip.decompress(stream) == b"head" + data
    assert zlib.decompressobj(31).decompress(stream) == b"head" + data  # one member


def test_a_ct_is_loaded_through_put_frame_and_gives_the_same_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_stack writes each uncompressed CT frame with put_frame (and rescales it on
    the way: unsigned 12 bits, intercept -1024 into int16); the image is the one the
    frames written through the mapping give."""
    write_ct_series(tmp_path / "ct", slices=6, size=32, seed=3)
    options = ConversionOptions(image_format="nii")
    put = VolumeBuffer.put_frame
    calls: list[bool] = []

    def counted(self: VolumeBuffer, index: tuple[int, int], values: Voxels) -> bool:
        calls.append(put(self, index, values))
        return calls[-1]

    monkeypatch.setattr(VolumeBuffer, "put_frame", counted)
    (tmp_path / "sink").mkdir()
    parse_folder(tmp_path / "ct", tmp_path / "sink", options)
    assert calls == [True] * 6
    monkeypatch.setattr(VolumeBuffer, "put_frame", lambda *_: False)
    (tmp_path / "mapped").mkdir()
    parse_folder(tmp_path / "ct", tmp_path / "mapped", options)
    (image,) = (tmp_path / "sink").glob("*.nii")
    assert image.read_bytes() == (tmp_path / "mapped" / image.name).read_bytes()
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    assert voxels.dtype == np.int16 and voxels.min() < 0  # rescaled to Hounsfield units
