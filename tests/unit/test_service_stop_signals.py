"""A service's stop event (seriesflow/service_commands.py): set by the first SIGTERM or
SIGINT, and a second signal arriving inside that first handler never deadlocks it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from seriesflow import service_commands


def _handlers(monkeypatch: pytest.MonkeyPatch) -> dict[int, Callable[[int, Any], None]]:
    """The handlers _stop_event installs, captured instead of installed."""
    installed: dict[int, Callable[[int, Any], None]] = {}

    def install(signum: int, handler: Callable[[int, Any], None]) -> None:
        installed[signum] = handler

    monkeypatch.setattr(signal, "signal", install)
    return installed


def test_sigterm_and_sigint_set_the_stop_event(monkeypatch: pytest.MonkeyPatch) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        installed = _handlers(monkeypatch)
        stop = service_commands._stop_event()
        assert not stop.is_set()
        installed[signum](signum, None)
        assert stop.is_set()


def test_a_second_signal_inside_the_first_handler_does_not_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second signal is delivered while the first handler holds the event's lock, as
    Python runs a handler between two bytecodes of whatever the main thread runs."""
    installed = _handlers(monkeypatch)

    class SecondSignalInside:
        """Holds a lock of its own while it is set, as threading.Event does, and gets the
        second signal there."""

        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._set = False

        def set(self) -> None:
            with self._lock:
                installed[signal.SIGINT](signal.SIGINT, None)  # Ctrl-C, inside SIGTERM's
                self._set = True

        def is_set(self) -> bool:
            return self._set

    # Only the stop event is of this kind (threading itself keeps its own Event)
    monkeypatch.setattr(service_commands, "threading", SimpleNamespace(Event=SecondSignalInside))
    stop = service_commands._stop_event()
    first = threading.Thread(target=installed[signal.SIGTERM], args=(signal.SIGTERM, None))
    first.daemon = True  # on a deadlock, left behind rather than hanging the test run
    first.start()
    first.join(5)
    assert not first.is_alive(), "the second handler waited for the first one's lock"
    assert stop.is_set()
