"""What an export has achieved, per destination, kept at ``exports/<export_id>/state.json``.

The state says, for every instance key, its last status (``sent``: the remote SCP
confirmed it with a success or warning status; ``failed``; ``skipped``), a short detail
and the attempt that set it; and how many attempts were made. An attempt loads it first and
sends only the keys not yet ``sent``, so a retry, a redelivery after a crash or a replay
never sends a confirmed instance again.

**When it is written** (:class:`StateRecorder`). The state is written once when an attempt
starts, after file outcomes, and once at the end. ``SERIESFLOW_EXPORTER_STATE_LAG``
(default 16) bounds how many recorded outcomes may still be on their way to the store while
the next files are sent:

* ``0``: each confirmation is durable before that association's next C-STORE starts. A
  crash can only resend the files that were on the wire (one per association).
* ``N > 0``: a background thread writes the newest state once ``N / 2`` outcomes are
  pending or 0.2 s after the first one (at once when a flush waits), and the senders wait
  only when ``N`` outcomes are not yet durable. A crash resends at most ``N`` files plus
  one per association.

A resend never duplicates anything at a destination that keys instances by SOP Instance
UID (PACS, Orthanc, dcmtk's ``storescp``), but it costs time and bandwidth, so the bound
matters most for very large files.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from shared.errors import SeriesflowError, TransientError
from shared.jobstore import JobStore
from shared.logs import get_logger

log = get_logger("exporter")

FileState = Literal["sent", "failed", "skipped"]
WRITE_INTERVAL = 0.2
"""Seconds the background writer gathers outcomes before a write (lag > 0)."""


class FileRecord(BaseModel):
    status: FileState
    detail: str = ""
    attempt: int = 1


class DestinationState(BaseModel):
    attempts: int = 0
    files: dict[str, FileRecord] = Field(default_factory=dict)

    def confirmed(self) -> set[str]:
        return {key for key, record in self.files.items() if record.status == "sent"}


class ExportState(BaseModel):
    version: Literal[1] = 1
    export_id: str
    destinations: dict[str, DestinationState] = Field(default_factory=dict)
    updated_at: datetime | None = None

    def for_destination(self, name: str) -> DestinationState:
        return self.destinations.setdefault(name, DestinationState())


def load_state(jobs: JobStore, export_id: str) -> ExportState:
    """The stored state, or a new one. A damaged state is replaced (everything is resent)."""
    data = jobs.export_state(export_id)
    if data is None:
        return ExportState(export_id=export_id)
    try:
        state = ExportState.model_validate_json(data)
    except (ValidationError, ValueError):
        log.warning("export state damaged, starting again", extra={"export_id": export_id})
        return ExportState(export_id=export_id)
    if state.export_id != export_id:
        log.warning("export state belongs to another export", extra={"export_id": export_id})
        return ExportState(export_id=export_id)
    return state


def save_state(jobs: JobStore, state: ExportState) -> None:
    jobs.put_export_state(state.export_id, state.model_dump_json().encode())


class StateRecorder:
    """Records file outcomes of one destination and keeps the stored state close behind.

    Use as a context manager; :meth:`flush` makes everything recorded durable. A failed
    write is raised from the next :meth:`record` or :meth:`flush` (as TransientError).
    """

    def __init__(self, jobs: JobStore, state: ExportState, destination: str, lag: int = 0) -> None:
        self.jobs = jobs
        self.state = state
        self.destination = state.for_destination(destination)
        self.lag = lag
        self._cond = threading.Condition()
        self._put_lock = threading.Lock()
        self._version = 0
        self._durable = 0
        self._error: SeriesflowError | None = None
        self._closed = False
        self._urgent = False
        self._writer: threading.Thread | None = None
        self.writes = 0

    def __enter__(self) -> StateRecorder:
        if self.lag > 0:
            self._writer = threading.Thread(
                target=self._write_loop, name="export-state", daemon=True
            )
            self._writer.start()
        return self

    def __exit__(self, *args: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()

    @property
    def attempt(self) -> int:
        return self.destination.attempts

    def start_attempt(self) -> int:
        """Count a new attempt and store it; returns its number (1 for the first)."""
        with self._cond:
            self.destination.attempts += 1
            self._version += 1
        self.flush()
        return self.destination.attempts

    def record(self, key: str, status: FileState, detail: str = "") -> None:
        with self._cond:
            self.destination.files[key] = FileRecord(
                status=status, detail=detail[:500], attempt=self.destination.attempts
            )
            self._version += 1
        if self.lag == 0:
            self.flush()
            return
        with self._cond:
            self._cond.notify_all()
            while self._error is None and self._version - self._durable > self.lag:
                self._cond.wait()
            self._raise_error()

    def flush(self) -> None:
        """Return once everything recorded so far is durable in the store."""
        if self._writer is None:
            # One write at a time (several associations record at once): a snapshot is
            # never overwritten by an older one, and a waiting thread often finds its
            # record already written by the one before it.
            with self._put_lock:
                with self._cond:
                    version = self._version
                    if version <= self._durable:
                        return
                    data = self._snapshot()
                self._put(data)
                with self._cond:
                    self._durable = max(self._durable, version)
            return
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._error is None and self._durable < self._version:
                self._cond.wait()
            self._raise_error()

    def _snapshot(self) -> bytes:
        self.state.updated_at = datetime.now(UTC)
        return self.state.model_dump_json().encode()

    def _put(self, data: bytes) -> None:
        self.jobs.put_export_state(self.state.export_id, data)
        self.writes += 1

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _write_loop(self) -> None:
        batch = max(1, self.lag // 2)
        while True:
            with self._cond:
                while not self._closed and self._durable >= self._version:
                    self._cond.wait()
                if self._durable >= self._version:
                    return
                # Gather outcomes for a moment: fewer writes of the whole state, which
                # compete with the downloads for the store. Never past half the lag, so
                # the senders do not wait; at once when a flush waits for it.
                deadline = time.monotonic() + WRITE_INTERVAL
                while (
                    not self._closed
                    and not self._urgent
                    and self._version - self._durable < batch
                    and (remaining := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(remaining)
                self._urgent = False
                version = self._version
                data = self._snapshot()
            try:
                self._put(data)
            except SeriesflowError as exc:
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            except Exception as exc:  # pragma: no cover - anything unexpected
                with self._cond:
                    self._error = TransientError(f"cannot store the export state: {exc}")
                    self._cond.notify_all()
                return
            with self._cond:
                self._durable = version
                self._cond.notify_all()
