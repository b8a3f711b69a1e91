"""The exporter downloads ahead into memory only as far as its byte budget allows, and
shares max-associations between the exports at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from services.exporter.exporting import (
    AssociationSlots,
    ExportAttempt,
    ExportOptions,
    _GroupSender,
)
from shared.config import DestinationConfig
from shared.samples import write_ct_series

MIB = 1 << 20


class FakeJobs:
    """``instance_bytes`` of a JobStore: one small DICOM file padded to ``size`` bytes."""

    def __init__(self, head: bytes, size: int) -> None:
        self.data = head + bytes(size - len(head))
        self.fetched: list[str] = []
        self.gate = threading.Event()  # downloads finish once it is set
        self.gate.set()
        self._lock = threading.Lock()

    def instance_bytes(self, key: str) -> bytes:
        with self._lock:
            self.fetched.append(key)
        self.gate.wait(10)
        return self.data


def sender(tmp_path: Path, jobs: FakeJobs, pool: ThreadPoolExecutor) -> _GroupSender:
    destination = DestinationConfig.model_validate(
        {"name": "pacs", "host-ip": "127.0.0.1", "port": 104, "ae-title": "PACS"}
    )
    options = ExportOptions(fetch_workers=4, prefetch=8, prefetch_bytes=32 * MIB)
    attempt = ExportAttempt(jobs, destination, "SCU", None, options)  # type: ignore[arg-type]
    group = [(f"incoming/a/{n}.dcm", ("1.2", "1.2.840.10008.1.2.1")) for n in range(20)]
    return _GroupSender(attempt, pool, (), group)


def settle(group: _GroupSender) -> None:
    wait(list(group._downloads.values()))


def test_large_files_are_not_downloaded_ahead_beyond_the_budget(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path / "ct", slices=1, size=16)
    jobs = FakeJobs(path.read_bytes(), 10 * MIB)
    jobs.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        group = sender(tmp_path, jobs, pool)
        taken = group._take()  # no size known yet: the next file and 3 more (4 workers)
        assert taken is not None
        jobs.gate.set()
        settle(group)
        assert len(jobs.fetched) == 4
        first = taken[1].result()
        second = group._take()  # 40 MiB held: no download ahead
        assert second is not None
        settle(group)
        assert len(jobs.fetched) == 4
        group._sent(first)
        group._sent(second[1].result())  # 20 MiB held: one more 10 MiB file fits in 32
        assert group._take() is not None
        settle(group)
        assert len(jobs.fetched) == 5
        assert group._held <= 32 * MIB


def test_small_files_are_downloaded_the_whole_prefetch_ahead(tmp_path: Path) -> None:
    (path,) = write_ct_series(tmp_path / "ct", slices=1, size=16)
    jobs = FakeJobs(path.read_bytes(), 512 * 1024)
    with ThreadPoolExecutor(4) as pool:
        group = sender(tmp_path, jobs, pool)
        assert group._take() is not None
        settle(group)
        assert group._take() is not None
        settle(group)
        assert len(jobs.fetched) == 10  # files 0 and 1, and 8 ahead of file 1


def test_an_export_alone_uses_every_slot_and_gives_extras_back_to_a_waiting_one() -> None:
    slots = AssociationSlots(2)
    slots.acquire()  # export A's first association
    assert slots.try_acquire()  # A's second: free
    assert not slots.try_acquire()  # no third
    got = threading.Event()

    def export_b() -> None:
        slots.acquire()
        got.set()

    waiting = threading.Thread(target=export_b)
    waiting.start()
    deadline = time.monotonic() + 10
    while not slots.wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slots.wanted and not got.is_set()  # B waits; A's extra sees it
    slots.release()  # A's extra gives its slot back after its file
    waiting.join(10)
    assert got.is_set() and not slots.wanted
    assert not slots.try_acquire()  # A's first and B's first hold both
