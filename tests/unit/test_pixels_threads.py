"""Frames of a large volume read by two threads: the same voxels, the same failure, as one."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from shared.dicom.files import InstanceFile
from shared.operator.parser import parse_folder
from shared.samples import write_ct_series
from shared.volumes import pixels
from shared.volumes.convert import ConversionOptions
from shared.volumes.nifti import VOX_OFFSET


def _convert(src: Path, out: Path, fmt: str) -> tuple[Path, list[str]]:
    metadata = parse_folder(src, out, ConversionOptions(image_format=fmt))  # type: ignore[arg-type]
    [series] = [se for st in metadata.studies for se in st.series]
    images = metadata.series_images()
    reasons = [n.reason for n in series.notConverted]
    return (out / next(iter(images.values()))) if images else out, reasons


def _by_position(paths: list[Path]) -> list[Path]:
    """The CT's files from the lowest slice up: the volume's order."""
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))


@pytest.fixture
def threads_seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads that loaded a file's frames."""
    seen: list[int] = []
    load = pixels._load_instance

    def spy(*args: object, **kwargs: object) -> None:
        seen.append(threading.get_ident())
        load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pixels, "_load_instance", spy)
    return seen


@pytest.mark.parametrize("fmt", ["nii", "mhd", "nii.gz"])
def test_two_threads_give_the_voxels_one_gives(
    tmp_path: Path, fmt: str, threads_seen: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ct_series(tmp_path / "ct", slices=40, size=512, seed=3)  # 20 MiB
    two, _ = _convert(tmp_path / "ct", tmp_path / "two", fmt)
    assert len(set(threads_seen)) == 2 and len(threads_seen) == 40
    threads_seen.clear()
    monkeypatch.setattr(pixels, "TWO_THREADS_FROM", 1 << 62)
    one, _ = _convert(tmp_path / "ct", tmp_path / "one", fmt)
    assert set(threads_seen) == {threading.get_ident()} and len(threads_seen) == 40
    assert two.read_bytes() == one.read_bytes()
    if fmt == "mhd":
        assert two.with_suffix(".raw").read_bytes() == one.with_suffix(".raw").read_bytes()


def test_small_volumes_are_read_by_one_thread(tmp_path: Path, threads_seen: list[int]) -> None:
    write_ct_series(tmp_path / "ct", slices=6, size=256, seed=3)  # 768 KiB
    _convert(tmp_path / "ct", tmp_path / "out", "nii")
    assert set(threads_seen) == {threading.get_ident()} and len(threads_seen) == 6


def test_the_first_truncated_file_is_reported_as_with_one_thread(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=40, size=512, seed=3)
    ordered = _by_position(paths)
    for cut in (ordered[35], ordered[12]):  # one in each half; the earlier is reported
        cut.write_bytes(cut.read_bytes()[:-100])
    out, reasons = _convert(tmp_path / "ct", tmp_path / "out", "nii")
    assert reasons == [f"{ordered[12].name}: pixel data is truncated"]
    assert list(out.iterdir()) == []


def _load(
    log: list[int], number: int, delay: float = 0.0, fails: bool = False
) -> Callable[[], None]:
    def load() -> None:
        time.sleep(delay)
        log.append(number)
        if fails:
            raise ValueError(f"load {number}")

    return load


def test_the_failure_raised_is_the_first_in_order() -> None:
    """The first half's failure, late, wins over the second half's, early; each half
    stops at its own failure."""
    log: list[int] = []
    loads = [  # halves: 0-3 here, 4-7 on the other thread
        _load(log, 0),
        _load(log, 1, delay=0.2, fails=True),
        _load(log, 2),
        _load(log, 3),
        _load(log, 4, fails=True),
        *(_load(log, n) for n in range(5, 8)),
    ]
    with pytest.raises(ValueError, match="load 1"):
        pixels._in_two_threads(loads)
    assert 2 not in log and 3 not in log  # the first half stopped at its failure
    assert 4 in log and not {5, 6, 7} & set(log)  # so did the second, at its own


def test_a_failure_in_the_second_half_alone_is_raised_after_the_first_half() -> None:
    log: list[int] = []
    loads = [_load(log, 0, delay=0.1), _load(log, 1, delay=0.1), _load(log, 2, fails=True)]
    with pytest.raises(ValueError, match="load 2"):
        pixels._in_two_threads(loads)
    assert sorted(log) == [0, 1, 2]


def test_the_second_half_stops_once_the_first_has_failed() -> None:
    log: list[int] = []
    loads = [_load(log, 0, fails=True), *(_load(log, n, delay=0.05) for n in range(1, 10))]
    with pytest.raises(ValueError, match="load 0"):
        pixels._in_two_threads(loads)
    assert log[0] == 0 or log[:2] == [5, 0]  # the first half ran its first load only
    assert len([n for n in log if n >= 5]) <= 1  # the second at most the one it had begun


def test_every_load_runs_once_in_its_half_order() -> None:
    log: list[int] = []
    pixels._in_two_threads([_load(log, n) for n in range(9)])
    assert sorted(log) == list(range(9))
    first, second = [n for n in log if n < 4], [n for n in log if n >= 4]
    assert first == sorted(first) and second == sorted(second)


def test_the_voxels_equal_pydicoms(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=40, size=512, seed=4)
    image, _ = _convert(tmp_path / "ct", tmp_path / "out", "nii")
    voxels = np.frombuffer(image.read_bytes()[VOX_OFFSET:], dtype=np.int16).reshape(40, 512, 512)
    datasets = [pydicom.dcmread(p) for p in _by_position(paths)]
    for z, ds in enumerate(datasets):
        expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(voxels[z].astype(np.int32), expected), z


@pytest.mark.parametrize("size", [16, 512])  # one thread, and a volume two would load
def test_a_file_whose_layout_fails_is_reported_after_the_files_before_it(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are loaded in order up to the one whose pixel layout cannot be read: a
    failure of an earlier file's pixels is the one reported, else that file's."""
    paths = write_ct_series(tmp_path / "ct", slices=40, size=size, seed=3)
    ordered = _by_position(paths)
    odd = ordered[30].name
    layout = pixels._native_layout

    def failing(item: InstanceFile) -> object:
        if item.path.name == odd:
            raise ValueError("an odd layout")
        return layout(item)

    monkeypatch.setattr(pixels, "_native_layout", failing)
    _, reasons = _convert(tmp_path / "ct", tmp_path / "first", "nii")
    assert reasons == [f"pixel data of {odd} cannot be decoded: ValueError: an odd layout"]
    cut = ordered[12]
    cut.write_bytes(cut.read_bytes()[:-100])
    _, reasons = _convert(tmp_path / "ct", tmp_path / "second", "nii")
    assert reasons == [f"{cut.name}: pixel data is truncated"]


def test_an_interruption_while_waiting_ends_the_other_half_first() -> None:
    """Ctrl-C or SIGTERM (an exception raised by a signal handler) while the first half
    waits for the second: the second stops at its next load and has ended when the
    exception reaches the caller, who may then close the file it writes to."""
    log: list[int] = []
    quick = [_load(log, n) for n in range(10)]  # the first half, done at once
    loads = [*quick, *(_load(log, n, delay=0.05) for n in range(10, 20))]

    class SignalledError(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise SignalledError

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.12)  # the first half waits by then
        with pytest.raises(SignalledError):
            pixels._in_two_threads(loads)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    ran = len(log)
    assert 10 < ran < 20  # the second half stopped early
    time.sleep(0.15)
    assert len(log) == ran  # and ran no load after the exception was raised
    for thread in threading.enumerate():
        if thread.name == "pixels":
            thread.join(1)
            assert not thread.is_alive()
