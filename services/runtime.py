"""What every service's entry point needs: connections retried until they answer, and a
way to run the service in a thread (tests, ``seriesflow up`` in one process, embedding).

``seriesflow <service>`` is the one way to run a service as a process; it builds the
settings from the environment, handles SIGTERM/SIGINT by setting ``stop`` and calls the
service's ``run(settings, stop)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self, TypeVar

from shared.broker import Broker
from shared.errors import TransientError
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.settings import ServiceSettings
from shared.store import ObjectStore

log = get_logger("runtime")
S = TypeVar("S", bound=ServiceSettings)


def _retry(
    settings: ServiceSettings, stop: threading.Event, what: str, attempt: Callable[[], None]
) -> bool:
    delay = settings.retry_backoff_seconds or 0.5
    while not stop.is_set():
        try:
            attempt()
            return True
        except TransientError as exc:
            log.warning(f"{what} unreachable, retrying", extra={"reason": exc.reason})
            stop.wait(delay)
            delay = min(delay * 2, settings.retry_backoff_max_seconds or 30.0)
    return False


def connect_store(
    settings: ServiceSettings, stop: threading.Event, metrics: Metrics | None = None
) -> ObjectStore | None:
    """The object store with its bucket, retried with backoff; None if stopped first."""
    store = ObjectStore(settings, metrics=metrics)
    return store if _retry(settings, stop, "object store", store.ensure_bucket) else None


def connect_broker(
    settings: ServiceSettings, producer: str, stop: threading.Event, metrics: Metrics | None = None
) -> Broker | None:
    """A connected broker, retried with backoff; None if stopped first."""
    broker = Broker(settings, producer, metrics)
    return (
        broker if _retry(settings, stop, "RabbitMQ", lambda: broker.connect(attempts=1)) else None
    )


class ServiceThread:
    """``run(settings, stop)`` in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(
        self,
        name: str,
        run: Callable[[S, threading.Event], None],
        settings: S,
    ) -> None:
        self.name = name
        self._run_service = run
        self.settings = settings
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._run_service(self.settings, self._stop)
        except BaseException as exc:
            self.error = exc
            log.exception(f"{self.name} ended with an error")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the {self.name} did not stop within {timeout} s")
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
