"""Putting an instance into the object store within a time limit.

A store that stalls must not make the sender abort (which would lose the association's
job): :meth:`TimedStore.put` gives up after ``SERIESFLOW_STORE_TIMEOUT_SECONDS`` and the
C-STORE is answered Refused (0xA700) while the sender is still waiting politely. The put
itself goes on in a worker thread; if it completes after all, the object is an
unacknowledged copy, which is deleted unless an acknowledged copy shares its key.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shared.errors import TransientError
from shared.jobstore import JobStore
from shared.logs import get_logger

log = get_logger("receiver.scp")


class StoreTimeoutError(TransientError):
    """The object store did not take the instance in time."""


class TimedStore:
    """``put`` with a deadline, on a bounded pool of worker threads."""

    def __init__(self, jobs: JobStore, timeout: float, workers: int = 16) -> None:
        self.jobs = jobs
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="receiver-put")

    def put(self, key: str, data: bytes, still_wanted: Callable[[], bool]) -> None:
        """Store ``data`` at ``key`` or raise (StoreTimeoutError past the deadline).

        ``still_wanted`` is asked if a late put completes: False deletes the object.
        """
        future = self._pool.submit(self.jobs.put_instance, key, data)
        try:
            future.result(timeout=self.timeout)
        except FutureTimeout:
            future.add_done_callback(lambda done: self._late(done, key, still_wanted))
            raise StoreTimeoutError(
                f"put {key}: the object store did not answer within {self.timeout:g} s"
            ) from None

    def _late(self, done: Future[Any], key: str, still_wanted: Callable[[], bool]) -> None:
        if done.exception() is not None or still_wanted():
            return
        try:
            self.jobs.delete_instance(key)
            log.info("late copy of a refused instance deleted", extra={"key": key})
        except Exception as exc:
            log.warning(
                "late copy of a refused instance not deleted; the sweep keeps it",
                extra={"key": key, "error": type(exc).__name__},
            )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
