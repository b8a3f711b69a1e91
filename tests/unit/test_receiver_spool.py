"""The receiver's local spool (services/receiver/spool.py) with an in-memory store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from services.receiver.spool import Spool, SpoolRefusedError
from shared import keys
from shared.errors import TransientError
from shared.jobstore import JobStore

A = "0" * 31 + "a"
B = "0" * 31 + "b"


class MemoryStore:
    """What the spool uses of JobStore; ``down`` fails every call, ``gate`` holds puts."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.order: list[str] = []
        self.down = False
        self.checks = 0
        self.gate = threading.Event()
        self.gate.set()
        self.delay = 0.0  # seconds each put takes (a slow store)
        self.lock = threading.Lock()

    def _check(self) -> None:
        if self.down:
            raise TransientError("store down")

    def ensure_bucket(self) -> None:
        self.checks += 1
        self._check()

    def put_instance(self, key: str, data: bytes) -> None:
        self.gate.wait(10)
        time.sleep(self.delay)
        self._check()
        with self.lock:
            self.objects[key] = data
            self.order.append(key)

    def put_association_record(self, association_id: str, record: dict[str, Any]) -> None:
        self.gate.wait(10)
        self._check()
        key = keys.association_record(association_id)
        with self.lock:
            self.objects[key] = json.dumps(record).encode()
            self.order.append(key)


def key(association: str, n: int) -> str:
    return keys.incoming_instance(association, f"1.2.3.{n}")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def memory() -> MemoryStore:
    return MemoryStore()


def make(root: Path, store: MemoryStore, **options: Any) -> Spool:
    values: dict[str, Any] = {"timeout": 5.0, "max_bytes": 1 << 20, "workers": 2, "backoff": 0.01}
    values.update(options)
    return Spool(root, "bucket", cast(JobStore, store), **values)


@contextmanager
def started(root: Path, store: MemoryStore, **options: Any) -> Iterator[Spool]:
    """A spool open and uploading; closed (its store's gate open) at the end."""
    spool = make(root, store, **options)
    spool.open()
    spool.start()
    try:
        yield spool
    finally:
        store.gate.set()
        spool.close()


@pytest.fixture
def spool(tmp_path: Path, memory: MemoryStore) -> Iterator[Spool]:
    with started(tmp_path, memory) as spool:
        yield spool


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != "lock")


def test_a_stored_instance_is_on_disk_before_it_returns_and_gone_once_uploaded(
    tmp_path: Path, memory: MemoryStore
) -> None:
    spool = make(tmp_path, memory)
    spool.open()
    spool.store(key(A, 1), A, b"one")  # no upload threads yet
    assert (spool.slot / key(A, 1)).read_bytes() == b"one"
    assert files(spool.slot) == ["1.2.3.1.dcm"], "no tmp file left"
    assert spool.pending(A) == 1
    spool.start()
    try:
        assert spool.drain(5)
        assert memory.objects[key(A, 1)] == b"one"
        assert files(spool.slot) == []
        assert spool.pending(A) == 0
    finally:
        spool.close()


def test_a_record_is_uploaded_after_every_instance_of_its_association(
    spool: Spool, memory: MemoryStore
) -> None:
    memory.gate.clear()
    for n in range(5):
        spool.store(key(A, n), A, b"x" * n)
    called = threading.Event()
    spool.store_record(A, {"association_id": A}, called.set)
    waited = threading.Event()
    spool.after_uploads(A, waited.set)
    assert not called.is_set() and not waited.is_set()
    memory.gate.set()
    assert spool.drain(5)
    wait_for(called.is_set)
    wait_for(waited.is_set)
    assert memory.order[-1] == keys.association_record(A)
    assert len(memory.order) == 6
    assert not (spool.slot / keys.incoming_prefix(A)).exists(), "folder removed after release"


def test_a_failing_store_refuses_new_instances_and_keeps_what_was_answered(
    spool: Spool, memory: MemoryStore
) -> None:
    memory.down = True
    spool.store(key(A, 1), A, b"answered")
    wait_for(lambda: spool.state().failing is not None)
    with pytest.raises(SpoolRefusedError, match="failing"):
        spool.store(key(A, 2), A, b"refused")
    assert not (spool.slot / key(A, 2)).exists()
    assert (spool.slot / key(A, 1)).read_bytes() == b"answered"
    memory.down = False
    assert spool.drain(5)
    assert memory.objects == {key(A, 1): b"answered"}
    spool.store(key(A, 3), A, b"again")  # uploads succeed again: accepted
    assert spool.drain(5)


def test_asking_the_store_marks_it_failing_until_it_answers(
    spool: Spool, memory: MemoryStore
) -> None:
    memory.down = True
    with pytest.raises(SpoolRefusedError):
        spool.store(key(A, 1), A, b"first", ask=True)
    with pytest.raises(SpoolRefusedError):
        spool.store(key(A, 2), A, b"second")
    memory.down = False
    wait_for(lambda: spool.state().failing is None)  # the prober asked again
    spool.store(key(A, 3), A, b"third", ask=True)
    assert spool.drain(5)
    assert list(memory.objects) == [key(A, 3)]


def test_an_upload_older_than_the_timeout_refuses_new_instances(
    tmp_path: Path, memory: MemoryStore
) -> None:
    with started(tmp_path, memory, timeout=0.2) as spool:
        memory.gate.clear()
        spool.store(key(A, 1), A, b"slow")
        time.sleep(0.3)
        with pytest.raises(SpoolRefusedError, match="has not taken"):
            spool.store(key(A, 2), A, b"refused")
        memory.gate.set()
        assert spool.drain(5)
        spool.store(key(A, 3), A, b"fine")
        assert spool.drain(5)
        assert sorted(memory.objects) == [key(A, 1), key(A, 3)]


def test_a_store_slower_than_the_senders_but_taking_files_is_not_refused(
    tmp_path: Path, memory: MemoryStore
) -> None:
    """Files wait longer than the timeout, but the store takes one every 0.1 s: a burst
    waits in the spool (up to its size limit) instead of being refused."""
    memory.delay = 0.1
    with started(tmp_path, memory, timeout=0.5, workers=1) as spool:
        for n in range(15):
            spool.store(key(A, n), A, b"burst")
        time.sleep(0.8)  # some taken; the oldest file waiting was spooled 0.8 s ago
        assert (spool.state().oldest_seconds or 0) > 0.5
        spool.store(key(A, 15), A, b"accepted")  # the store took one within 0.1 s
        assert spool.drain(5)
        assert len(memory.objects) == 16


def test_the_wait_counts_from_the_oldest_file_after_an_idle_store(
    tmp_path: Path, memory: MemoryStore
) -> None:
    """The store took its last file long ago: a file spooled now has not waited yet."""
    with started(tmp_path, memory, timeout=0.2) as spool:
        spool.store(key(A, 1), A, b"first")
        assert spool.drain(5)
        time.sleep(0.3)  # idle for longer than the timeout
        memory.gate.clear()
        spool.store(key(A, 2), A, b"held")
        spool.store(key(A, 3), A, b"accepted")  # nothing has waited 0.2 s yet
        time.sleep(0.3)
        with pytest.raises(SpoolRefusedError, match="has not taken"):
            spool.store(key(A, 4), A, b"refused")
        memory.gate.set()
        assert spool.drain(5)
        assert sorted(memory.objects) == [key(A, 1), key(A, 2), key(A, 3)]


def test_a_full_spool_refuses(tmp_path: Path, memory: MemoryStore) -> None:
    spool = make(tmp_path, memory, max_bytes=1 << 20)
    spool.open()
    spool.store(key(A, 1), A, b"x" * (1 << 19))
    spool.store(key(A, 2), A, b"x" * (1 << 19))
    with pytest.raises(SpoolRefusedError, match="limit"):
        spool.store(key(A, 3), A, b"x")
    spool.close()


def test_a_new_copy_under_the_same_key_is_the_one_that_ends_in_the_store(
    spool: Spool, memory: MemoryStore
) -> None:
    memory.gate.clear()
    spool.store(key(A, 1), A, b"old")
    wait_for(lambda: key(A, 1) in spool._inflight)  # the old copy is being uploaded
    spool.store(key(A, 1), A, b"new")
    memory.gate.set()
    assert spool.drain(5)
    assert memory.objects[key(A, 1)] == b"new"
    assert spool.pending(A) == 0


def test_a_restart_uploads_what_a_killed_process_left_instances_first(
    tmp_path: Path, memory: MemoryStore
) -> None:
    dead = make(tmp_path, memory)
    slot = dead.open()
    for n in range(3):
        dead.store(key(A, n), A, b"a%d" % n)
    dead.store_record(A, {"association_id": A}, lambda: None)
    dead.store(key(B, 1), B, b"b1")  # open at the kill: no record
    (slot / key(B, 2)).with_name("1.2.3.2.dcm.tmp").write_bytes(b"cut")  # never answered
    uploaded = (slot / key(B, 3)).with_name("1.2.3.3.dcm.uploaded")
    uploaded.write_bytes(b"b3")  # uploaded, killed before its removal
    dead.close()  # like a kill: nothing was uploaded
    assert memory.objects == {}

    spool = make(tmp_path, memory)
    assert spool.open() == slot, "the dead process's slot is free"
    assert spool.recover() == 5
    assert spool.recovering() == 5
    assert not (slot / key(B, 2)).with_name("1.2.3.2.dcm.tmp").exists()
    assert not uploaded.exists(), "an uploaded file is removed, not uploaded again"
    spool.start()
    try:
        assert spool.drain(5)
        assert spool.recovering() == 0
        record_at = memory.order.index(keys.association_record(A))
        assert record_at > max(memory.order.index(key(A, n)) for n in range(3)), "record last"
        assert set(memory.objects) == {
            *(key(A, n) for n in range(3)),
            keys.association_record(A),
            key(B, 1),
        }
        assert json.loads(memory.objects[keys.association_record(A)]) == {"association_id": A}
    finally:
        spool.close()


def test_an_upload_wakes_no_idle_upload_thread(tmp_path: Path, memory: MemoryStore) -> None:
    """Each instance wakes one upload thread; an upload's end wakes none of the idle ones
    (it used to wake all of them, for drain's sake: 7 needless wake-ups an instance with
    8 threads, each taking the lock the receive path needs)."""
    spool = make(tmp_path, memory, workers=8)
    slot = spool.open()
    spool.start()
    waits = 0
    wait = spool._lock.wait

    def counted(timeout: float | None = None) -> bool:
        nonlocal waits
        waits += 1
        return wait(timeout)

    try:
        wait_for(lambda: len(spool._lock._waiters) == 8)  # type: ignore[attr-defined]
        spool._lock.wait = counted  # type: ignore[method-assign]
        for n in range(20):
            spool.store(key(A, n), A, b"x")
            assert spool.drain(5)
            wait_for(lambda: len(spool._lock._waiters) == 8)  # type: ignore[attr-defined]
    finally:
        spool.close()
    assert len(memory.order) == 20
    assert waits <= 2 * 20, f"{waits} waits of idle upload threads for 20 instances"
    assert files(slot) == []


def test_live_receivers_sharing_a_folder_take_their_own_slots_and_adopt_dead_ones(
    tmp_path: Path, memory: MemoryStore
) -> None:
    first, second = make(tmp_path, memory), make(tmp_path, memory)
    assert first.open() != (dead_slot := second.open())
    second.store(key(B, 1), B, b"b")
    second.close()  # dies with a file left
    third = make(tmp_path, memory)
    try:
        third.open()
        assert third.slot == dead_slot
        first.store(key(A, 1), A, b"a")
        assert third.recover() == 1, "the live receiver's file is not taken"
        third.start()
        assert third.drain(5)
        assert memory.objects == {key(B, 1): b"b"}
    finally:
        third.close()
        first.close()


def test_keys_outside_incoming_are_refused(spool: Spool) -> None:
    with pytest.raises(Exception, match="incoming"):
        spool.store("jobs/x/manifest.json", A, b"{}")


def test_an_empty_spool_leaves_no_folder_behind_and_a_full_one_stays(
    tmp_path: Path, memory: MemoryStore
) -> None:
    spool = make(tmp_path, memory)
    spool.open()
    spool.start()
    spool.store(key(A, 1), A, b"a")
    assert spool.drain(5)
    spool.close()
    assert list(tmp_path.iterdir()) == [], "nothing left: no clutter per bucket"
    kept = make(tmp_path, memory)
    slot = kept.open()
    kept.store(key(A, 2), A, b"kept")
    kept.close()
    assert (slot / key(A, 2)).read_bytes() == b"kept", "what is not uploaded stays"
    again = make(tmp_path, memory)
    assert again.open() == slot
    again.close()


def test_a_store_that_answered_within_a_second_is_not_asked_again(
    spool: Spool, memory: MemoryStore
) -> None:
    spool.store(key(A, 1), A, b"first", ask=True)
    assert memory.checks == 1, "no upload yet: the store is asked"
    assert spool.drain(5)
    spool.store(key(B, 1), B, b"next association", ask=True)
    assert memory.checks == 1, "an upload just succeeded: not asked again"
    time.sleep(1.1)
    spool.store(key(B, 2), B, b"later", ask=True)
    assert memory.checks == 2
