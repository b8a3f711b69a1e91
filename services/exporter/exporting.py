"""One attempt of one export: the files not yet confirmed go to the destination.

1. Load the state; the keys it does not mark ``sent`` are pending.
2. Read the head of each pending object (its File Meta Information) in parallel: a missing
   object or one that is not a DICOM Part 10 file is ``skipped``.
3. Plan the association(s) from the files' SOP classes and transfer syntaxes and send the
   files over ``exporter_associations`` parallel associations (each takes the next file in
   the requested order), each file downloaded ahead into memory (at most
   ``exporter_prefetch`` files ahead, and no new download ahead while
   ``exporter_prefetch_mib`` are held) and dropped once sent.
4. Record each file's outcome as it happens (:class:`StateRecorder`).

Retries inside the attempt: a C-STORE without a response (timeout, abort, lost
connection) closes the association, waits (the service's backoff, doubling) and sends the
same file again over a new association, up to ``exporter_file_retries`` times. Opening an
association is tried as often; when it cannot be opened, the file and all files after it
fail for this attempt, transiently unless the destination rejected us permanently. A store
that cannot be read raises :class:`TransientError` (what was recorded stays recorded).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from services.exporter.association import (
    AssociationError,
    Pair,
    StoreAssociation,
    Timeouts,
    plan_associations,
)
from services.exporter.export_state import FileState, StateRecorder
from services.exporter.meta import HEAD_BYTES, FileMeta, NotPart10Error, parse_file_meta
from services.exporter.settings import ExporterSettings
from services.exporter.status import StoreOutcome, Tally
from shared.config import DestinationConfig
from shared.events import FileStatus
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.store import ObjectNotFoundError

log = get_logger("exporter")
_MAX_META_BYTES = 1 << 20


class AssociationSlots:
    """At most ``limit`` associations at once in the process (``max-associations``),
    shared by the exports running at once. An export's first association waits for a
    slot; each further one takes a free slot or does without, and gives it back after its
    current file as soon as another export waits for one. So an export alone uses every
    slot, and two exports at once share them."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            self._waiting += 1
            while self._free == 0:
                self._cond.wait()
            self._waiting -= 1
            self._free -= 1

    def try_acquire(self) -> bool:
        with self._cond:
            if self._free == 0 or self._waiting:
                return False
            self._free -= 1
            return True

    def release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()

    @property
    def wanted(self) -> bool:
        """Whether an export waits for a slot."""
        return self._waiting > 0


@dataclass(frozen=True)
class ExportOptions:
    fetch_workers: int = 4
    prefetch: int = 8
    prefetch_bytes: int = 32 << 20
    file_retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_pdu: int = 16382
    associations: int = 1
    slots: AssociationSlots | None = None  # None: every export opens ``associations``

    @classmethod
    def from_settings(
        cls,
        settings: ExporterSettings,
        max_pdu: int | None = None,
        associations: int = 1,
        slots: AssociationSlots | None = None,
    ) -> ExportOptions:
        return cls(
            fetch_workers=settings.exporter_fetch_workers,
            prefetch=settings.exporter_prefetch,
            prefetch_bytes=settings.exporter_prefetch_mib << 20,
            file_retries=settings.exporter_file_retries,
            backoff=settings.retry_backoff_seconds,
            backoff_max=settings.retry_backoff_max_seconds,
            timeouts=Timeouts(
                connect=settings.exporter_connect_timeout,
                acse=settings.exporter_acse_timeout,
                dimse=settings.exporter_dimse_timeout,
                network=settings.exporter_network_timeout,
            ),
            max_pdu=settings.exporter_max_pdu if max_pdu is None else max_pdu,
            associations=settings.exporter_associations or associations,
            slots=None if settings.exporter_associations else slots,
        )

    def wait(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...)."""
        return float(min(self.backoff * 2.0 ** (retry - 1), self.backoff_max))


@dataclass(frozen=True)
class AttemptResult:
    attempt: int
    files: list[FileStatus]
    tally: Tally
    sent_now: int

    def reason(self, destination: str) -> str:
        """Why the export failed: counts and the first file's problem."""
        first = next((f for f in self.files if f.status != "sent"), None)
        detail = f"; first: {first.detail}" if first is not None and first.detail else ""
        return (
            f"{self.tally.unconfirmed} of {self.tally.total} files were not confirmed by "
            f"destination {destination}{detail}"
        )


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def read_file_meta(jobs: JobStore, key: str) -> FileMeta:
    """The File Meta Information of a stored file, from as few bytes as possible."""
    length = HEAD_BYTES
    while True:
        head = jobs.instance_head(key, length)
        result = parse_file_meta(head, complete=len(head) < length)
        if isinstance(result, FileMeta):
            return result
        if result > _MAX_META_BYTES:
            raise NotPart10Error("the File Meta Information is larger than 1 MiB")
        length = result


def manifest_pairs(jobs: JobStore, job_id: str) -> dict[str, Pair]:
    """(SOP class, transfer syntax) of each instance the receiver recorded in the job's
    manifest: those files need no header read. Empty when there is no usable manifest."""
    manifest = jobs.find_manifest(job_id)
    if manifest is None:
        log.info("no usable job manifest, reading file headers instead")
        return {}
    return {i.key: (i.sop_class_uid, i.transfer_syntax_uid) for i in manifest.instances}


@dataclass(frozen=True)
class Downloaded:
    """A stored file in memory, and its header as found in those bytes."""

    meta: FileMeta
    data: bytes


def download(jobs: JobStore, key: str) -> Downloaded:
    """Download a file; a missing one raises ObjectNotFoundError, a non-Part 10 one
    NotPart10Error."""
    data = jobs.instance_bytes(key)
    result = parse_file_meta(data, complete=True)
    assert isinstance(result, FileMeta)  # complete=True never asks for more
    return Downloaded(result, data)


class ExportAttempt:
    """Sends the pending files of one export to one destination, recording each outcome."""

    def __init__(
        self,
        jobs: JobStore,
        destination: DestinationConfig,
        calling_ae_title: str,
        recorder: StateRecorder,
        options: ExportOptions,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.jobs = jobs
        self.destination = destination
        self.calling_ae_title = calling_ae_title
        self.recorder = recorder
        self.options = options
        self.sleep = sleep
        self.transient: dict[str, bool] = {}
        self.sent_now = 0
        self._lock = threading.Lock()

    def run(
        self, instance_keys: list[str], known: Mapping[str, Pair] | None = None
    ) -> AttemptResult:
        """Send what is pending of ``instance_keys``. ``known`` gives the (SOP class, transfer
        syntax) of keys whose header need not be read first (from the job manifest)."""
        requested = unique(instance_keys)
        attempt = self.recorder.start_attempt()
        confirmed = self.recorder.destination.confirmed()
        pending = [k for k in requested if k not in confirmed]
        log.info(
            "export attempt started",
            extra={
                "destination": self.destination.name,
                "attempt": attempt,
                "files": len(requested),
                "pending": len(pending),
            },
        )
        if pending:
            with ThreadPoolExecutor(
                self.options.fetch_workers, thread_name_prefix="export-fetch"
            ) as pool:
                sendable = self._read_heads(pool, pending, known or {})
                if sendable:
                    self._send(pool, sendable)
        self.recorder.flush()
        return self._result(requested, attempt)

    # -- heads ------------------------------------------------------------------------

    def _read_heads(
        self, pool: ThreadPoolExecutor, pending: list[str], known: Mapping[str, Pair]
    ) -> list[tuple[str, Pair]]:
        futures = {
            key: pool.submit(read_file_meta, self.jobs, key) for key in pending if key not in known
        }
        sendable: list[tuple[str, Pair]] = []
        try:
            for key in pending:
                if key in known:
                    sendable.append((key, known[key]))
                    continue
                try:
                    meta = futures[key].result()
                    sendable.append((key, (meta.sop_class_uid, meta.transfer_syntax_uid)))
                except ObjectNotFoundError:
                    self._record(key, "skipped", "not in the object store", transient=False)
                except NotPart10Error as exc:
                    self._record(key, "skipped", str(exc), transient=False)
        finally:
            for future in futures.values():
                future.cancel()
        return sendable

    # -- sending ----------------------------------------------------------------------

    def _send(self, pool: ThreadPoolExecutor, files: list[tuple[str, Pair]]) -> None:
        plans = plan_associations([pair for _, pair in files])
        for number, plan in enumerate(plans):
            group = [files[i] for i in plan.files]
            stopped = _GroupSender(self, pool, plan.contexts, group).run()
            if stopped is not None:
                for later in plans[number + 1 :]:
                    for index in later.files:
                        key = files[index][0]
                        self._record(key, "failed", stopped.reason, stopped.transient)
                return

    def _send_file(
        self, association: StoreAssociation, key: str, file: Downloaded
    ) -> AssociationError | None:
        """Send one file, re-associating as needed; records its outcome."""
        resends = 0
        while True:
            if not association.is_open:
                error = self._open(association)
                if error is not None:
                    self._record(key, "failed", error.reason, error.transient)
                    return error
            result = association.send(file.data, file.meta)
            if result.outcome is StoreOutcome.CONFIRMED:
                with self._lock:
                    self.sent_now += 1
                self._record(key, "sent", result.detail, transient=False)
                return None
            if result.outcome is StoreOutcome.RESEND:
                association.abort()
                resends += 1
                if resends > self.options.file_retries:
                    self._record(key, "failed", f"{result.detail}, {resends} times", transient=True)
                    return None
                log.warning(
                    "no C-STORE response, sending again",
                    extra={"destination": self.destination.name, "retry": resends},
                )
                self.sleep(self.options.wait(resends))
                continue
            busy = result.outcome is StoreOutcome.BUSY
            self._record(key, "failed", f"refused: {result.detail}", transient=busy)
            return None

    def _open(self, association: StoreAssociation) -> AssociationError | None:
        tries = 0
        while True:
            try:
                association.open()
                return None
            except AssociationError as exc:
                tries += 1
                if not exc.transient or tries > self.options.file_retries:
                    log.warning(
                        "cannot associate",
                        extra={"destination": self.destination.name, "reason": exc.reason},
                    )
                    return exc
                self.sleep(self.options.wait(tries))

    # -- bookkeeping ------------------------------------------------------------------

    def _record(self, key: str, status: FileState, detail: str, transient: bool) -> None:
        with self._lock:
            self.transient[key] = transient
        self.recorder.record(key, status, detail)

    def _result(self, requested: list[str], attempt: int) -> AttemptResult:
        records = self.recorder.destination.files
        files: list[FileStatus] = []
        confirmed = transient = 0
        for key in requested:
            record = records.get(key)
            if record is None:
                files.append(FileStatus(key=key, status="failed", detail="not attempted"))
                transient += 1
                continue
            files.append(FileStatus(key=key, status=record.status, detail=record.detail))
            if record.status == "sent":
                confirmed += 1
            elif self.transient.get(key, True):
                transient += 1
        return AttemptResult(
            attempt, files, Tally(len(requested), confirmed, transient), self.sent_now
        )


class _GroupSender:
    """The files of one association plan, sent over up to ``options.associations``
    associations at once. Each association's thread takes the next file in order; files
    are downloaded ahead, into memory, in that order: up to ``options.prefetch`` files
    ahead of the next one taken, as long as the files waiting to be sent and the downloads
    running (each counted as large as the largest file so far) fit
    ``options.prefetch_bytes`` (the next file is always fetched). When no
    association can be opened, or one that was sending cannot be opened again, no file is
    taken any more and every file not yet taken fails with that reason; an extra
    association the destination does not serve is only logged."""

    def __init__(
        self,
        attempt: ExportAttempt,
        pool: ThreadPoolExecutor,
        contexts: tuple[Pair, ...],
        group: list[tuple[str, Pair]],
    ) -> None:
        self.attempt = attempt
        self.pool = pool
        self.contexts = contexts
        self.group = group
        # reentrant: a download already done runs its callback (which takes the lock) at
        # once, in the thread that adds it, with the lock held
        self._lock = threading.RLock()
        self._downloads: dict[int, Future[Downloaded]] = {}
        self._held = 0  # bytes downloaded and not yet sent
        self._largest = 0  # the largest file downloaded so far: what the next may cost
        self._next = 0
        self._stopped: AssociationError | None = None
        self._raised: BaseException | None = None
        self._count = 1  # associations still working (or trying to open)

    def run(self) -> AssociationError | None:
        """Send the group; returns the error that stopped it, if one did."""
        count = self._count = max(1, min(self.attempt.options.associations, len(self.group)))
        with self._lock:  # the first downloads run while the associations open
            for position in range(min(self.attempt.options.prefetch, len(self.group))):
                if position and not self._may_fetch_ahead():
                    break
                self._fetch(position)
        try:
            if count == 1:
                self._work()
            else:
                threads = [
                    threading.Thread(
                        target=self._guarded, args=(n > 0,), name=f"export-send-{n}", daemon=True
                    )
                    for n in range(count)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        finally:
            with self._lock:
                futures = list(self._downloads.values())
                self._downloads.clear()
            for future in futures:
                future.cancel()
        if self._raised is not None:
            raise self._raised  # e.g. the state could not be stored: the attempt stops
        stopped = self._stopped
        if stopped is not None:
            for key, _pair in self.group[self._next :]:
                self.attempt._record(key, "failed", stopped.reason, stopped.transient)
        return stopped

    def _fetch(self, position: int) -> None:
        """Start downloading the file at ``position`` (with the lock held)."""
        key = self.group[position][0]
        future = self.pool.submit(download, self.attempt.jobs, key)
        future.add_done_callback(self._downloaded)
        self._downloads[position] = future

    def _downloaded(self, future: Future[Downloaded]) -> None:
        if not future.cancelled() and future.exception() is None:
            with self._lock:
                size = len(future.result().data)
                self._held += size
                self._largest = max(self._largest, size)

    def _sent(self, file: Downloaded) -> None:
        with self._lock:
            self._held -= len(file.data)

    def _take(self) -> tuple[int, Future[Downloaded]] | None:
        """The next file's position and download, fetching ahead; None when done."""
        options = self.attempt.options
        with self._lock:
            if self._stopped or self._raised or self._next >= len(self.group):
                return None
            position = self._next
            self._next += 1
            if position not in self._downloads:
                self._fetch(position)
            last = min(position + 1 + options.prefetch, len(self.group))
            for ahead in range(position + 1, last):
                if ahead not in self._downloads:
                    if not self._may_fetch_ahead():
                        break
                    self._fetch(ahead)
            return position, self._downloads.pop(position)

    def _may_fetch_ahead(self) -> bool:
        """Whether one more download ahead fits ``options.prefetch_bytes``, counting every
        download not finished as large as the largest so far; before any has finished, up
        to ``options.fetch_workers`` run (with the lock held)."""
        options = self.attempt.options
        running = sum(1 for future in self._downloads.values() if not future.done())
        if self._largest == 0:
            return running < options.fetch_workers
        return self._held + (running + 1) * self._largest <= options.prefetch_bytes

    def _opened(self, association: StoreAssociation) -> bool:
        """Open one of several associations before taking a file. An SCP that serves fewer
        associations at once (storescp without ``--fork``) answers the others late or not
        at all: while another association is still sending, giving up is no error."""
        error = self.attempt._open(association)
        with self._lock:
            if error is None:
                return True
            self._count -= 1
            if self._count == 0 and self._next < len(self.group) and self._stopped is None:
                self._stopped = error  # no association at all: the rest fail
            else:
                log.info(
                    "fewer parallel associations than asked for",
                    extra={"destination": self.attempt.destination.name, "reason": error.reason},
                )
            return False

    def _guarded(self, extra: bool) -> None:
        """:meth:`_work` in a thread of its own: what it raises stops the others and is
        raised again by :meth:`run`."""
        try:
            self._work(extra)
        except BaseException as exc:  # handed to run()
            with self._lock:
                if self._raised is None:
                    self._raised = exc

    def _work(self, extra: bool = False) -> None:
        """Send files over one association until none is left (or it must stop). An
        ``extra`` association (not the export's first) runs only with a free slot, and
        stops after a file when another export waits for one."""
        slots = self.attempt.options.slots
        if slots is not None:
            if not extra:
                slots.acquire()
            elif not slots.try_acquire():
                with self._lock:
                    self._count -= 1
                return
        try:
            self._send_over_one(slots if extra else None)
        finally:
            if slots is not None:
                slots.release()

    def _send_over_one(self, yield_to: AssociationSlots | None) -> None:
        attempt = self.attempt
        association = StoreAssociation(
            attempt.destination,
            attempt.calling_ae_title,
            self.contexts,
            attempt.options.timeouts,
            attempt.options.max_pdu,
        )
        try:
            if self._count > 1 and not self._opened(association):
                return
            while (yield_to is None or not yield_to.wanted) and (taken := self._take()):
                position, future = taken
                key = self.group[position][0]
                try:
                    file = future.result()
                except ObjectNotFoundError:
                    attempt._record(key, "skipped", "not in the object store", transient=False)
                    continue
                except NotPart10Error as exc:
                    attempt._record(key, "skipped", str(exc), transient=False)
                    continue
                try:
                    error = attempt._send_file(association, key, file)
                finally:
                    self._sent(file)
                del file  # its bytes go before the next download completes
                if error is not None:
                    with self._lock:
                        if self._stopped is None:
                            self._stopped = error
                    return
        finally:
            association.close()
