"""pynetdicom's reactor threads wake when their peer sends, not only after a sleep.

pynetdicom 3.0 reads a connection on one thread per association (``DULServiceProvider``)
that polls: when a turn of its loop found nothing to do, it sleeps ``_run_loop_delay``
(1 ms) before it looks at the socket again. A peer that waits for each C-STORE response
before it sends the next request loses up to that sleep per instance.

:func:`install` replaces the ``time`` module *as seen by* ``pynetdicom.dul`` with
:class:`WakingClock`: everything is the real module's except ``sleep``, which, on a reactor
thread with a socket, waits on that socket for at most the same time (``select``), so the
thread wakes as soon as the next PDU arrives. Anything else sleeps as before. Measured on
the 300 x 512² CT with uploads held back (the receiver's own path): 241 -> 292
instances/s.

If the socket stays readable while the reactor does not read it (a state pynetdicom's loop
should never be in), ``select`` would return at once on every turn; after
``SPIN_LIMIT`` such returns in a row one real sleep is taken, so that never spins a core.

Each association also has a thread of its own (``Association._run_reactor``), which looks
for decoded DIMSE messages and for the peer's A-RELEASE or A-ABORT after a sleep of 1 ms,
a thousand times a second for as long as the association is open. Two idle associations
cost the receiver about 0.5 s of CPU time every 5 s (measured with the stack of
scripts/stack.sh). :class:`AssociationClock` replaces ``time`` as seen by
``pynetdicom.association``: in that loop only, an association prepared by
:func:`wake_on_messages` waits instead until a message or an indication is queued for it
(the puts of its two queues set an event), or at most :data:`ASSOCIATION_IDLE_SECONDS`,
after which it looks as before (the DUL thread has ended, the network timeout has
passed). Every other sleep in that module is the real one.
"""

from __future__ import annotations

import select
import sys
import threading
import time
from types import ModuleType
from typing import Any

from pynetdicom import association, dul

SPIN_LIMIT = 8
"""Consecutive waits that returned at once (readable within IMMEDIATE_SECONDS) before a
real sleep is taken."""

IMMEDIATE_SECONDS = 0.00005

ASSOCIATION_IDLE_SECONDS = 0.02
"""Longest an association's own reactor sleeps between looks when nothing is queued for it:
how late it notices what no queue announces (its DUL thread ended, the network timeout)."""

_WAKEUP = "_seriesflow_wakeup"  # the event of an association prepared by wake_on_messages
_REACTOR = association.Association._run_reactor.__code__


class _Clock:
    """The real ``time`` module, but for ``sleep``, which a subclass defines."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class WakingClock(_Clock):
    """Stands in for the ``time`` module inside ``pynetdicom.dul`` (see the module
    docstring)."""

    def __init__(self, real: ModuleType) -> None:
        super().__init__(real)
        self._local = threading.local()

    def sleep(self, seconds: float) -> None:
        sock = _reactor_socket(threading.current_thread())
        local = self._local
        immediate = getattr(local, "immediate", 0)
        if sock is None or immediate >= SPIN_LIMIT or seconds <= 0:
            local.immediate = 0
            self._real.sleep(seconds)
            return
        started = self._real.monotonic()
        try:
            readable, _, _ = select.select([sock], [], [], seconds)
        except (OSError, ValueError):  # closed meanwhile: the reactor finds out itself
            local.immediate = 0
            self._real.sleep(seconds)
            return
        waited = self._real.monotonic() - started
        local.immediate = immediate + 1 if readable and waited < IMMEDIATE_SECONDS else 0


def _reactor_socket(thread: threading.Thread) -> Any | None:
    """The socket a pynetdicom reactor thread reads (None for any other thread, or a
    reactor without a connection)."""
    if not isinstance(thread, dul.DULServiceProvider):
        return None
    sock = getattr(getattr(thread, "socket", None), "socket", None)
    if sock is None or not hasattr(sock, "fileno"):
        return None
    return sock


class AssociationClock(_Clock):
    """Stands in for the ``time`` module inside ``pynetdicom.association`` (see the module
    docstring)."""

    def sleep(self, seconds: float) -> None:
        wakeup = getattr(threading.current_thread(), _WAKEUP, None)
        if not isinstance(wakeup, threading.Event) or sys._getframe(1).f_code is not _REACTOR:
            self._real.sleep(seconds)
            return
        # Cleared after the wait: what is queued meanwhile is seen by the looks that follow
        # this sleep, and what is queued after them sets the event for the next one.
        wakeup.wait(ASSOCIATION_IDLE_SECONDS)
        wakeup.clear()


def wake_on_messages(assoc: Any) -> None:
    """Make ``assoc``'s own reactor wake when a DIMSE message or a DUL indication (A-RELEASE,
    A-ABORT) is queued for it, and sleep up to :data:`ASSOCIATION_IDLE_SECONDS` otherwise
    (with :class:`AssociationClock` installed); before its reactor runs (EVT_CONN_OPEN)."""
    wakeup = threading.Event()
    for messages in (assoc.dimse.msg_queue, assoc.dul.to_user_queue):
        messages.put = _waking(messages.put, wakeup)
    setattr(assoc, _WAKEUP, wakeup)


def _waking(put: Any, wakeup: threading.Event) -> Any:
    def put_and_wake(item: Any, *args: Any, **kwargs: Any) -> None:
        put(item, *args, **kwargs)
        wakeup.set()

    return put_and_wake


def install() -> None:
    """Install :class:`WakingClock` in ``pynetdicom.dul`` and :class:`AssociationClock` in
    ``pynetdicom.association``; idempotent."""
    module = vars(dul)
    if not isinstance(module["time"], WakingClock):
        module["time"] = WakingClock(time)
    module = vars(association)
    if not isinstance(module["time"], AssociationClock):
        module["time"] = AssociationClock(time)
