"""Previews: the PNG of a volume's three middle slices, and operator mode writing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from seriesflow.cli import app
from shared.samples.ct import write_ct_series
from shared.volumes.preview import (
    GAP_PIXELS,
    PANEL_PIXELS,
    _grey,
    dicom_window,
    middle_slices,
    png_bytes,
    render_preview,
    side_by_side,
    write_preview,
)


def read_png(data: bytes, tmp_path: Path) -> np.ndarray[Any, Any]:
    """Decoded by ITK's PNG reader (libpng), not by our own code."""
    path = tmp_path / "read.png"
    path.write_bytes(data)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_png_round_trips_through_libpng(tmp_path: Path) -> None:
    grey = np.arange(3 * 7, dtype=np.uint8).reshape(3, 7) * 12
    assert np.array_equal(read_png(png_bytes(grey), tmp_path), grey)


def test_panels_keep_the_physical_aspect_and_the_window() -> None:
    voxels = np.zeros((20, 100, 50), dtype=np.int16)  # z, y, x
    voxels[:, :, 25:] = 100
    canvas = render_preview(voxels, (1.0, 1.0, 5.0), window=(50.0, 100.0))
    # axial 100x50 mm, coronal 100(z)x50 mm, sagittal 100(z)x100 mm: tallest is 192 px
    assert canvas.shape == (PANEL_PIXELS, 96 + 96 + PANEL_PIXELS + 2 * GAP_PIXELS)
    axial = canvas[:, :96]
    assert axial[0, 0] == 0 and axial[0, 95] == 255  # -inf..0 black, 100 white at (50, 100)
    sagittal = canvas[:, 96 + 96 + 2 * GAP_PIXELS :]
    assert (sagittal == 255).all()  # the middle column (x=25) is all 100


def test_window_from_the_data_when_dicom_gives_none() -> None:
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32), (8, 64, 64)).copy()
    canvas = render_preview(ramp, (1.0, 1.0, 1.0), window=None)
    axial = canvas[:, :PANEL_PIXELS]
    assert axial.min() == 0 and axial.max() == 255


def test_dicom_window() -> None:
    ds = Dataset()
    assert dicom_window(ds) is None
    ds.WindowCenter, ds.WindowWidth = ["40", "300"], ["400", "1500"]
    assert dicom_window(ds) == (40.0, 400.0)
    ds.WindowWidth = "0"
    assert dicom_window(ds) is None
    ds.WindowWidth = "400"
    ds.PhotometricInterpretation = "MONOCHROME1"  # written inverted: the window would lie
    assert dicom_window(ds) is None


def test_operator_mode_writes_previews_unless_told_not_to(tmp_path: Path) -> None:
    source = tmp_path / "ct"
    write_ct_series(source, slices=12, size=64)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", "-i", str(source), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    metadata = json.loads((out / "dicom-metadata.json").read_text())
    [volume] = [v for st in metadata["studies"] for se in st["series"] for v in se["volumes"]]
    assert volume["preview"] == f"{volume['key']}.png"
    png = read_png((out / volume["preview"]).read_bytes(), tmp_path)
    assert png.ndim == 2 and png.shape[0] <= PANEL_PIXELS and png.max() > png.min()
    series_images = json.loads((out / "series-images.json").read_text())
    assert series_images == {volume["key"]: volume["image"]}  # Clara's shape, no preview

    off = tmp_path / "off"
    argv = ["process", "-i", str(source), "-o", str(off), "-q", "--no-previews"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert not list(off.glob("*.png"))
    metadata = json.loads((off / "dicom-metadata.json").read_text())
    assert metadata["studies"][0]["series"][0]["volumes"][0].get("preview") is None


def test_colour_and_4d_volumes(tmp_path: Path) -> None:
    rgb = np.zeros((4, 10, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 90  # mean of the components: 30
    rgb[:, :, 5:, 0] = 255  # mean 85
    canvas = render_preview(rgb, (1.0, 1.0, 1.0), window=(127.5, 255.0))  # grey = value
    assert set(np.unique(canvas[:, :PANEL_PIXELS]).tolist()) == {30, 85}

    series = np.zeros((3, 4, 8, 8), dtype=np.int16)  # t, z, y, x
    series[0] = 7
    series[1:] = 1000
    path = tmp_path / "v.png"
    write_preview(series, (1.0, 1.0, 1.0), path, window=(7.0, 2.0))
    grey = read_png(path.read_bytes(), tmp_path)
    assert grey.shape == (PANEL_PIXELS, 3 * PANEL_PIXELS + 2 * GAP_PIXELS)
    assert set(np.unique(grey).tolist()) <= {0, 128}  # the first timepoint only: 7, not 1000
    assert 128 in np.unique(grey)


def whole_plane_preview(
    voxels: np.ndarray[Any, Any], spacing: tuple[float, float, float], window: tuple[float, float]
) -> np.ndarray[Any, Any]:
    """The preview drawn the long way: each whole middle plane in grey, then resized."""
    sx, sy, sz = spacing

    def resized(plane: np.ndarray[Any, Any], row_mm: float, col_mm: float) -> Any:
        rows, cols = plane.shape
        scale = PANEL_PIXELS / max(rows * row_mm, cols * col_mm)
        out_rows, out_cols = (
            max(1, round(rows * row_mm * scale)),
            max(1, round(cols * col_mm * scale)),
        )
        r = np.minimum((np.arange(out_rows) + 0.5) * rows / out_rows, rows - 1).astype(np.intp)
        c = np.minimum((np.arange(out_cols) + 0.5) * cols / out_cols, cols - 1).astype(np.intp)
        return plane[np.ix_(r, c)]

    planes = middle_slices(voxels)
    panels = [
        resized(_grey(planes[0], window), sy, sx),
        resized(_grey(planes[1], window)[::-1], sz, sx),
        resized(_grey(planes[2], window)[::-1], sz, sy),
    ]
    return side_by_side(panels)


def test_sampling_only_the_shown_voxels_draws_the_same_preview() -> None:
    rng = np.random.default_rng(4)
    for shape, spacing in [
        ((37, 64, 48), (0.7, 0.7, 3.0)),
        ((300, 80, 80), (1.0, 1.0, 0.5)),
        ((5, 33, 200), (2.0, 0.5, 1.0)),
        ((9, 20, 30, 3), (1.0, 1.0, 1.0)),
    ]:
        voxels = rng.integers(-1024, 3000, size=shape).astype(np.int16)
        if len(shape) == 4:
            voxels = voxels.astype(np.uint8)
        window = (40.0, 400.0)
        drawn = render_preview(voxels, spacing, window)
        assert np.array_equal(drawn, whole_plane_preview(voxels, spacing, window)), shape
