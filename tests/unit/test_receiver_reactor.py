"""The receiver's changes to pynetdicom's threads: reactor threads that wake on data
(services/receiver/wakeup.py) and C-STORE requests served on the thread that decoded them
(services/receiver/dimse.py)."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom import dul
from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from services.receiver import dimse, wakeup


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    try:
        yield left, right
    finally:
        left.close()
        right.close()


@pytest.fixture
def clock(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket]
) -> wakeup.WakingClock:
    """A clock whose every caller counts as a reactor thread reading ``pair[0]``."""
    monkeypatch.setattr(wakeup, "_reactor_socket", lambda thread: pair[0])
    return wakeup.WakingClock(time)


def test_a_reactor_sleep_ends_when_the_peer_sends(
    clock: wakeup.WakingClock, pair: tuple[socket.socket, socket.socket]
) -> None:
    threading.Timer(0.05, pair[1].send, args=(b"\x04",)).start()
    started = time.monotonic()
    clock.sleep(2.0)
    assert time.monotonic() - started < 1.0


def test_a_reactor_sleep_lasts_its_time_without_data(clock: wakeup.WakingClock) -> None:
    started = time.monotonic()
    clock.sleep(0.1)
    assert time.monotonic() - started >= 0.09


class CountingTime:
    """A time module whose clock moves only when it sleeps, and which counts its sleeps:
    how long the real ``select`` took (on a busy machine, longer than IMMEDIATE_SECONDS)
    then cannot change what the clock decides."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_socket_left_unread_does_not_spin(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Readable and never read: SPIN_LIMIT quick returns, then a real sleep each time."""
    monkeypatch.setattr(wakeup, "_reactor_socket", lambda thread: pair[0])
    fake = CountingTime()
    clock = wakeup.WakingClock(fake)  # type: ignore[arg-type]
    pair[1].send(b"\x04")
    for _ in range(3 * (wakeup.SPIN_LIMIT + 1)):
        clock.sleep(0.05)
    assert fake.sleeps == [0.05] * 3


def test_other_threads_sleep_as_before() -> None:
    clock = wakeup.WakingClock(time)
    assert wakeup._reactor_socket(threading.current_thread()) is None
    started = time.monotonic()
    clock.sleep(0.05)
    assert time.monotonic() - started >= 0.045
    assert clock.monotonic is time.monotonic  # everything else is the real module's


def test_install_replaces_pynetdicoms_clock_once() -> None:
    wakeup.install()
    installed = vars(dul)["time"]
    wakeup.install()
    assert isinstance(installed, wakeup.WakingClock)
    assert vars(dul)["time"] is installed


def _store(message_id: int) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.AffectedSOPInstanceUID = f"1.2.3.{message_id}"
    request.Priority = 2
    return request


def _echo() -> C_ECHO:
    request = C_ECHO()
    request.MessageID = 9
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return request


def test_a_decoded_store_request_is_taken_to_be_served_at_once() -> None:
    messages: queue.Queue[Any] = queue.Queue()
    messages.put((1, _store(1)))
    serving = threading.Lock()
    taken = dimse._take_store_request(messages, serving)
    assert taken is not None
    assert taken[0] == 1 and taken[1].MessageID == 1
    assert serving.locked()  # held for the caller, released once served
    assert messages.empty()


def test_other_requests_stay_with_the_association_thread() -> None:
    messages: queue.Queue[Any] = queue.Queue()
    messages.put((3, _echo()))
    messages.put((1, _store(2)))
    serving = threading.Lock()
    assert dimse._take_store_request(messages, serving) is None  # the echo is first in line
    assert not serving.locked()
    assert messages.qsize() == 2


def test_nothing_is_taken_while_a_request_is_being_served() -> None:
    messages: queue.Queue[Any] = queue.Queue()
    messages.put((1, _store(3)))
    serving = threading.Lock()
    serving.acquire()
    try:
        assert dimse._take_store_request(messages, serving) is None
    finally:
        serving.release()
    assert messages.qsize() == 1


def test_a_response_is_never_taken_for_a_request() -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 4
    response.Status = 0
    messages: queue.Queue[Any] = queue.Queue()
    messages.put((1, response))
    assert dimse._take_store_request(messages, threading.Lock()) is None


@pytest.fixture
def reactor(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """(an association prepared by wake_on_messages, a function sleeping as its reactor
    loop does), with this thread standing for the association's."""
    assoc = SimpleNamespace(
        dimse=SimpleNamespace(msg_queue=queue.Queue()),
        dul=SimpleNamespace(to_user_queue=queue.Queue()),
    )
    wakeup.wake_on_messages(assoc)
    clock = wakeup.AssociationClock(time)

    def reactor_sleep() -> None:
        clock.sleep(0.001)  # as Association._run_reactor does

    monkeypatch.setattr(wakeup, "_REACTOR", reactor_sleep.__code__)
    thread = threading.current_thread()
    monkeypatch.setattr(thread, wakeup._WAKEUP, getattr(assoc, wakeup._WAKEUP), raising=False)
    yield assoc, reactor_sleep


@pytest.mark.parametrize("queued", ["message", "indication"])
def test_an_association_reactor_wakes_when_something_is_queued_for_it(
    monkeypatch: pytest.MonkeyPatch, reactor: tuple[Any, Any], queued: str
) -> None:
    assoc, reactor_sleep = reactor
    monkeypatch.setattr(wakeup, "ASSOCIATION_IDLE_SECONDS", 5.0)
    target = assoc.dimse.msg_queue if queued == "message" else assoc.dul.to_user_queue
    threading.Timer(0.05, target.put, args=(queued,)).start()
    started = time.monotonic()
    reactor_sleep()
    assert time.monotonic() - started < 2.0
    assert target.get_nowait() == queued  # queued as before


def test_an_idle_association_reactor_sleeps_longer_than_a_millisecond(
    monkeypatch: pytest.MonkeyPatch, reactor: tuple[Any, Any]
) -> None:
    _, reactor_sleep = reactor
    monkeypatch.setattr(wakeup, "ASSOCIATION_IDLE_SECONDS", 0.1)
    started = time.monotonic()
    reactor_sleep()
    assert 0.09 <= time.monotonic() - started < 2.0


def test_other_sleeps_of_an_association_are_real(reactor: tuple[Any, Any]) -> None:
    assoc, _ = reactor
    assoc.dimse.msg_queue.put("message")  # the event is set: a reactor sleep would not wait
    started = time.monotonic()
    wakeup.AssociationClock(time).sleep(0.05)  # not from the reactor loop
    assert time.monotonic() - started >= 0.045


def test_install_puts_the_association_clock_in_pynetdicom() -> None:
    from pynetdicom import association

    wakeup.install()
    assert isinstance(vars(association)["time"], wakeup.AssociationClock)
    assert isinstance(vars(dul)["time"], wakeup.WakingClock)
