"""The receiver's local spool: durable on local disk before success, uploaded behind.

A C-STORE (or STOW-RS part) is answered Success once its Part-10 bytes are in a file of
the spool that survives a crash: written as ``<name>.tmp``, ``fdatasync``, renamed to
its final name, and the directory ``fsync``-ed (a new association's directory is itself
made durable in its parent once). Upload threads then put each spooled file into the
object store through :class:`shared.jobstore.JobStore` under the same key as before
(``incoming/<association_id>/<SOPInstanceUID>.dcm``) and remove the local file only
after the store has taken it.

A released association's record is written to the spool too (durable before anything
else happens to it), and uploaded only once every instance of its association is in the
store; then :class:`services.receiver.release.JobService` goes on with the job. So a job
is never released (manifest, event) before all of its instances are in the store.

Layout: ``<SERIESFLOW_SPOOL_DIR>/<bucket>/<slot>/<object key>``. A receiver process
holds an exclusive ``flock`` on the ``lock`` file of one numbered slot for its lifetime,
so receivers sharing a volume (or a test machine) never touch each other's files. At
start (:meth:`Spool.recover`) a receiver uploads what is left in its slot and in every
slot no live process holds (a receiver that was killed): instances first, each
association's record after its instances. ``*.tmp`` files were never acknowledged and
are deleted.

The spool is a latency buffer, not an outage buffer (:meth:`Spool.check`): new instances
are refused (the handler answers 0xA700, Out of Resources) while the last upload attempt
failed, while files wait and the store has taken none for longer than
``SERIESFLOW_STORE_TIMEOUT_SECONDS`` (counted from the oldest file's spooling when that
came later: a store slower than the senders but taking files is no reason to refuse), or
when the spool would grow past ``SERIESFLOW_SPOOL_MAX_BYTES``. Uploads are retried
forever (an acknowledged instance is never given up) with the services' backoff
(``SERIESFLOW_RETRY_BACKOFF_SECONDS`` doubling up to ``..._MAX_SECONDS``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from shared import keys
from shared.errors import PermanentError, TransientError
from shared.jobstore import JobStore
from shared.logs import get_logger

log = get_logger("receiver.spool")

_TMP = ".tmp"
_UPLOADED = ".uploaded"  # a file the store has taken, renamed to be removed outside the lock
_RECORD = "association.json"
_MAX_SLOTS = 1024
_FRESH_SECONDS = 1.0  # an upload or check this recent stands for a check of the store


class SpoolRefusedError(TransientError):
    """The spool takes no new instance now (store failing or stalled, or spool full)."""


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/seriesflow/receiver-spool`` (``~/.local/state`` without it)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "seriesflow" / "receiver-spool"


@dataclass
class _Entry:
    key: str
    path: Path
    association_id: str
    size: int
    since: float
    record: bool = False
    generation: int = 0
    then: Callable[[], None] | None = None


@dataclass
class _Slot:
    path: Path
    lock_fd: int


@dataclass
class SpoolState:
    """What the spool holds now (for logs, metrics and tests)."""

    files: int
    bytes: int
    failing: str | None
    oldest_seconds: float | None
    recovering: int = 0
    associations: dict[str, int] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(path: Path, data: bytes | memoryview) -> Path:
    """``data`` in ``<path>.tmp``, on disk (fdatasync); the tmp file's path."""
    tmp = path.with_name(path.name + _TMP)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return tmp


class Spool:
    """Local durable spool with background uploads (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        bucket: str,
        jobs: JobStore,
        *,
        timeout: float,
        max_bytes: int,
        workers: int = 8,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        self.base = root / keys.validate_file_name(bucket)
        self.jobs = jobs
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.workers = workers
        self.backoff = backoff or 0.5
        self.backoff_max = max(backoff_max or 30.0, self.backoff)
        self._slot: _Slot | None = None
        self._adopted: list[_Slot] = []
        mutex = threading.RLock()  # some holders call methods that take it again
        self._lock = threading.Condition(mutex)  # upload threads wait on it for work
        self._emptied = threading.Condition(mutex)  # drain waits on it for uploads to end
        self._entries: dict[str, _Entry] = {}
        self._queue: deque[str] = deque()
        self._inflight: set[str] = set()
        self._pending: dict[str, int] = {}  # association -> instance entries pending
        self._records: dict[str, str] = {}  # association -> record key waiting for them
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._recovering: set[str] = set()
        self._dirs: set[Path] = set()
        self._bytes = 0
        self._removing = 0  # uploaded files renamed, not unlinked yet (see _done)
        self._failing: str | None = None
        self._last_ok = -_FRESH_SECONDS  # monotonic time of the last upload or check
        self._last_taken = -math.inf  # monotonic time of the last upload the store took
        self._delay = self.backoff
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._probes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="receiver-probe")

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def slot(self) -> Path:
        if self._slot is None:
            raise RuntimeError("the spool is not open")
        return self._slot.path

    def open(self) -> Path:
        """Take the first free slot (flock) under ``<root>/<bucket>/``; its path."""
        for _ in range(10):
            try:
                self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
                for number in range(_MAX_SLOTS):
                    slot = self._try_lock(self.base / str(number))
                    if slot is not None:
                        self._slot = slot
                        log.info("spool opened", extra={"slot": number})
                        return slot.path
            except FileNotFoundError:  # removed by a receiver closing an empty spool
                continue
            raise TransientError(f"no free spool slot under {self.base} ({_MAX_SLOTS} in use)")
        raise TransientError(f"the spool folder {self.base} keeps disappearing")

    @staticmethod
    def _try_lock(path: Path) -> _Slot | None:
        """The slot at ``path``, locked; None if a live process holds it."""
        while True:
            path.mkdir(mode=0o700, exist_ok=True)
            lock = path / "lock"
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = lock.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return _Slot(path, fd)
            os.close(fd)  # its last holder removed it after we opened it: again

    def start(self) -> None:
        """Start the upload threads."""
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._upload_loop, args=(n == 0,), name=f"receiver-upload-{n}", daemon=True
            )
            for n in range(max(self.workers, 1))
        ]
        for thread in self._threads:
            thread.start()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every spooled file to be uploaded and removed; True
        if empty."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._entries or self._removing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._emptied.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        """Stop the upload threads; what is not uploaded stays for the next start."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + 5.0  # an upload held by a stalled store is let go
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            left = len(self._entries)
        if left:
            log.warning(
                "stopping with spooled files not uploaded; uploaded after a restart",
                extra={"files": left},
            )
        self._probes.shutdown(wait=False, cancel_futures=True)
        for slot in [*self._adopted, *([self._slot] if self._slot else [])]:
            self._release_slot(slot, remove=not left)
        self._adopted = []
        self._slot = None

    def _release_slot(self, slot: _Slot, remove: bool) -> None:
        """Unlock a slot; ``remove`` (it holds nothing): its folders and lock file too,
        and the bucket's folder if that was the last slot (best effort)."""
        if remove:
            for path in sorted(slot.path.rglob("*"), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() else None
            with contextlib.suppress(OSError):
                (slot.path / "lock").unlink()  # while locked: see _try_lock
                slot.path.rmdir()
                slot.path.parent.rmdir()
        os.close(slot.lock_fd)

    # -- restart ------------------------------------------------------------------------------

    def recover(self) -> int:
        """Queue what earlier processes left: this slot's files and those of every slot no
        live process holds. Instances are uploaded first, each record after its
        association's instances; :meth:`recovering` says how many are still pending."""
        slots = [self.slot]
        for path in sorted(p for p in self.base.iterdir() if p.is_dir() and p != self.slot):
            if not path.name.isdigit():
                continue
            adopted = self._try_lock(path)
            if adopted is not None:
                self._adopted.append(adopted)
                slots.append(path)
        found = 0
        for slot in slots:
            incoming = slot / keys.INCOMING.rstrip("/")
            if not incoming.is_dir():
                continue
            for folder in sorted(incoming.iterdir()):
                found += self._recover_folder(slot, folder)
        if found:
            log.warning(
                "spooled files left by an earlier receiver: uploading them", extra={"files": found}
            )
        return found

    def _recover_folder(self, slot: Path, folder: Path) -> int:
        association_id = folder.name
        try:
            keys.validate_id(association_id)
        except Exception:
            log.error(
                "spool folder with an unexpected name; left alone", extra={"key": folder.name}
            )
            return 0
        found = 0
        record: Path | None = None
        for path in sorted(folder.iterdir()):
            if path.name.endswith(_TMP):
                path.unlink()  # never acknowledged: the crash came before its rename
                continue
            if path.name.endswith(_UPLOADED):
                path.unlink()  # uploaded: the crash came before its removal
                continue
            if path.name == _RECORD:
                record = path
                continue
            key = path.relative_to(slot).as_posix()
            self._add(_Entry(key, path, association_id, path.stat().st_size, time.monotonic()))
            with self._lock:
                self._recovering.add(key)
            found += 1
        if record is not None:
            key = keys.association_record(association_id)
            entry = _Entry(
                key, record, association_id, record.stat().st_size, time.monotonic(), record=True
            )
            self._add(entry)
            with self._lock:
                self._recovering.add(key)
            found += 1
        else:
            self.after_uploads(association_id, lambda: self._forget_dir(folder))
        return found

    def recovering(self) -> int:
        """How many files left by earlier processes are not uploaded yet."""
        with self._lock:
            return len(self._recovering)

    # -- the receive path ---------------------------------------------------------------------

    def check(self, size: int = 0) -> None:
        """Raise SpoolRefusedError if a new instance of ``size`` bytes must be refused."""
        with self._lock:
            if self._failing is not None:
                raise SpoolRefusedError(f"the object store is failing: {self._failing}")
            oldest = next(iter(self._entries.values()), None)
            # Waiting since the oldest file was spooled or the store last took one, if later:
            # a store slower than the senders but taking files is not refused (the size
            # limit bounds what waits), one that takes nothing is.
            if (
                oldest is not None
                and time.monotonic() - max(oldest.since, self._last_taken) > self.timeout
            ):
                raise SpoolRefusedError(
                    f"the object store has not taken a spooled file for more than "
                    f"{self.timeout:g} s"
                )
            if self._bytes + size > self.max_bytes:
                raise SpoolRefusedError(
                    f"the spool holds {self._bytes} bytes, its limit is {self.max_bytes}"
                )

    def check_store(self) -> None:
        """Ask the object store (bucket exists) within the store timeout, unless an upload
        or a check succeeded in the last second; SpoolRefusedError (and the store marked
        failing until it answers again) if it does not answer."""
        with self._lock:
            if time.monotonic() - self._last_ok < _FRESH_SECONDS and self._failing is None:
                return
        future = self._probes.submit(self.jobs.ensure_bucket)
        try:
            future.result(timeout=self.timeout)
        except FutureTimeout:
            reason = f"the object store did not answer within {self.timeout:g} s"
        except Exception as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
        else:
            with self._lock:
                self._last_ok = time.monotonic()
                if self._failing is not None and not self._entries:
                    self._failing = None
            return
        self.mark_failing(reason)
        raise SpoolRefusedError(f"the object store is failing: {reason}")

    def store(self, key: str, association_id: str, data: bytes, *, ask: bool = False) -> None:
        """Write ``data`` for ``key`` durably and queue its upload; SpoolRefusedError if
        refused (:meth:`check`; with ``ask``, the store is asked first: :meth:`check_store`),
        OSError if the local disk failed."""
        if ask:
            self.check_store()
        self.check(len(data))
        self._spool(_Entry(key, self._path(key), association_id, len(data), 0.0), data)

    def store_record(
        self, association_id: str, record: dict[str, object], then: Callable[[], None]
    ) -> None:
        """Write a released association's record durably; it is uploaded once every
        instance of the association is, then ``then`` is called (in an upload thread)."""
        key = keys.association_record(association_id)
        data = json.dumps(record).encode()
        entry = _Entry(key, self._path(key), association_id, len(data), 0.0, True, then=then)
        self._spool(entry, data)

    def _spool(self, entry: _Entry, data: bytes) -> None:
        """tmp + fdatasync, then (under the lock, so an upload of an earlier copy never
        removes this one) rename and queue, then fsync the directory."""
        self._ensure_dir(entry.path.parent)
        tmp = _write_tmp(entry.path, data)
        with self._lock:
            tmp.replace(entry.path)
            entry.since = time.monotonic()
            self._add(entry)
        _fsync_dir(entry.path.parent)

    def forget(self, association_id: str) -> None:
        """The association ended without a record (aborted): remove its folder once its
        uploads are done."""
        folder = self._path(keys.incoming_prefix(association_id))

        def remove() -> None:
            with self._lock:
                self._forget_dir(folder)

        self.after_uploads(association_id, remove)

    def read(self, key: str) -> bytes | None:
        """The spooled bytes of ``key``; None if it is not in the spool (uploaded)."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.path.read_bytes()

    def after_uploads(self, association_id: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no file of ``association_id`` is pending (now if none)."""
        with self._lock:
            if self._pending.get(association_id) or association_id in self._records:
                self._waiters.setdefault(association_id, []).append(callback)
                return
        callback()

    def pending(self, association_id: str) -> int:
        with self._lock:
            return self._pending.get(association_id, 0) + (association_id in self._records)

    def state(self) -> SpoolState:
        with self._lock:
            oldest = next(iter(self._entries.values()), None)
            return SpoolState(
                files=len(self._entries),
                bytes=self._bytes,
                failing=self._failing,
                oldest_seconds=None if oldest is None else time.monotonic() - oldest.since,
                recovering=len(self._recovering),
                associations=dict(self._pending),
            )

    def mark_failing(self, reason: str) -> None:
        """The store is known to be unreachable (at start): refuse until it answers."""
        with self._lock:
            self._failing = reason

    # -- internals ----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        if not key.startswith(keys.INCOMING) or ".." in key:
            raise PermanentError(f"not a key of incoming/: {key!r}")
        return self.slot / key

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._dirs:
            return
        parent = folder.parent
        if parent not in self._dirs:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _fsync_dir(parent.parent)
            self._dirs.add(parent)
        folder.mkdir(mode=0o700, exist_ok=True)
        _fsync_dir(parent)
        self._dirs.add(folder)

    def _add(self, entry: _Entry) -> None:
        with self._lock:
            known = self._entries.get(entry.key)
            if known is not None:  # a new copy under the same key (overwrite): upload again
                known.generation += 1
                self._bytes += entry.size - known.size
                known.size = entry.size
                if entry.key not in self._inflight and entry.key not in self._queue:
                    self._queue.append(entry.key)
                self._lock.notify()
                return
            self._entries[entry.key] = entry
            self._bytes += entry.size
            if entry.record:
                self._records[entry.association_id] = entry.key
                if not self._pending.get(entry.association_id):
                    self._queue.append(entry.key)
            else:
                self._pending[entry.association_id] = self._pending.get(entry.association_id, 0) + 1
                self._queue.append(entry.key)
            self._lock.notify()

    def _next(self, prober: bool) -> tuple[_Entry, int] | None:
        with self._lock:
            while not self._queue:
                if self._stop.is_set():
                    return None
                self._lock.wait(0.5)
                if prober and self._failing is not None and not self._entries:
                    break
            if not self._queue:
                return None
            key = self._queue.popleft()
            entry = self._entries[key]
            self._inflight.add(key)
            return entry, entry.generation

    def _upload_loop(self, prober: bool) -> None:
        while not self._stop.is_set():
            item = self._next(prober)
            if item is None:
                self._probe()
                continue
            entry, generation = item
            try:
                self._upload(entry)
            except Exception as exc:
                self._failed(entry, exc)
                continue
            self._done(entry, generation)

    def _probe(self) -> None:
        """While the store is marked failing with nothing to upload, ask it again."""
        with self._lock:
            if self._failing is None or self._entries or self._stop.is_set():
                return
            delay = self._delay
        try:
            self.jobs.ensure_bucket()
        except Exception as exc:
            log.warning(
                "object store still unreachable; C-STORE is refused",
                extra={"reason": getattr(exc, "reason", type(exc).__name__)},
            )
            self._stop.wait(delay)
            with self._lock:
                self._delay = min(self._delay * 2, self.backoff_max)
            return
        with self._lock:
            self._failing = None
            self._delay = self.backoff
            self._last_ok = time.monotonic()
        log.info("object store reachable again")

    def _upload(self, entry: _Entry) -> None:
        data = entry.path.read_bytes()
        if entry.record:
            self.jobs.put_association_record(entry.association_id, json.loads(data))
        else:
            self.jobs.put_instance(entry.key, data)

    def _failed(self, entry: _Entry, exc: Exception) -> None:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        with self._lock:
            self._inflight.discard(entry.key)
            self._failing = reason
            delay = self._delay
            self._delay = min(self._delay * 2, self.backoff_max)
        level = log.error if not isinstance(exc, TransientError | OSError) else log.warning
        level(
            "spooled file not uploaded yet; retrying",
            extra={"key": entry.key, "reason": reason, "in_seconds": delay},
        )
        self._stop.wait(delay)
        with self._lock:
            self._queue.appendleft(entry.key)
            self._lock.notify()

    def _done(self, entry: _Entry, generation: int) -> None:
        """The store has taken ``entry`` as it was at ``generation``: forget it.

        The file is renamed under the lock (so a new copy under the same name is never the
        one removed) and unlinked after it: an unlink frees the file's blocks, about 15
        times as long as a rename here, and the receive path waits for this lock. Only the
        upload threads are woken for work, and only when some was queued; :meth:`drain`
        waits on a condition of its own."""
        callbacks: list[Callable[[], None]] = []
        uploaded: Path | None = None
        with self._lock:
            self._inflight.discard(entry.key)
            self._failing = None
            self._delay = self.backoff
            self._last_ok = self._last_taken = time.monotonic()
            if entry.generation != generation:  # rewritten meanwhile: upload the new copy
                self._queue.append(entry.key)
                self._lock.notify()
                return
            if entry.record:
                with contextlib.suppress(FileNotFoundError):
                    entry.path.unlink()  # once an association, and its folder goes next
            else:
                uploaded = entry.path.with_name(entry.path.name + _UPLOADED)
                try:
                    entry.path.replace(uploaded)
                    self._removing += 1
                except FileNotFoundError:
                    uploaded = None
            del self._entries[entry.key]
            self._bytes -= entry.size
            self._recovering.discard(entry.key)
            association = entry.association_id
            if entry.record:
                self._records.pop(association, None)
                if entry.then is not None:
                    callbacks.append(entry.then)
            else:
                left = self._pending.get(association, 1) - 1
                if left:
                    self._pending[association] = left
                else:
                    self._pending.pop(association, None)
                    record = self._records.get(association)
                    if record is not None and record not in self._inflight:
                        self._queue.append(record)
                        self._lock.notify()
            if not self._pending.get(association) and association not in self._records:
                callbacks += self._waiters.pop(association, [])
            if entry.record:  # the association is over: its folder is empty now
                self._forget_dir(entry.path.parent)
            if not self._entries and not self._removing:
                self._emptied.notify_all()
        if uploaded is not None:
            # Gone already if its folder was removed (_forget_dir); else left to a restart.
            with contextlib.suppress(OSError):
                uploaded.unlink()
            with self._lock:
                self._removing -= 1
                if not self._entries and not self._removing:
                    self._emptied.notify_all()
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                log.exception(
                    "work after an association's uploads failed",
                    extra={"association": association, "error": type(exc).__name__},
                )

    def _forget_dir(self, folder: Path) -> None:
        """An ended association's folder is empty: remove it (best effort). Its uploaded
        files may still be there, about to be unlinked by the threads that uploaded them
        (:meth:`_done`): they are removed here first."""
        self._dirs.discard(folder)
        with contextlib.suppress(OSError):
            for leftover in folder.glob("*" + _UPLOADED):
                leftover.unlink(missing_ok=True)
            folder.rmdir()
