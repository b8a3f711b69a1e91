"""A folder's series converted by two processes at once (operator mode).

Converting a series (its attribute placement, frames, pixels and image file) needs nothing
from the other series, and a folder's headers are read by then. So once they are,
:func:`map_in_processes` forks one child process: it inherits every header read (nothing is
copied or sent to it), converts a share of the series and sends back what the metadata
needs of them (their :class:`~shared.dicom.metadata.Series` documents, pickled through a
pipe). The parent converts the rest meanwhile. The shares are balanced by file count, the
heaviest series first.

Results come back in the order of the series, so the documents are the same as one
process's; image files are written under a temporary name and renamed, as always. The child
logs through the same handlers (the logging module makes their locks usable after a fork)
and prints nothing. Should the child fail in any way (an error in a series, a signal, a
result that does not arrive), the parent converts its share itself, so that an error is
reported as it would be by one process and nothing is lost.

Only when asked for (``SERIESFLOW_PROCESSES=2``, ``--processes 2``), on a system with
``fork`` and more than one CPU, for at least two series; never in a service (the parser
service holds broker and object store connections that a forked copy must not use).

It is not the default because of memory. Both processes write to pages they shared (every
object they touch, every allocation into a page freed objects left), and each has a series
in flight: on the combined benchmark folder the two processes' memory (the sum of their
proportional set sizes) peaked at 235 MiB against 166 MiB for one, above the 197 MiB the
project allows that folder (3 x its largest volume + 150 MiB).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TypeVar

from shared.logs import get_logger

log = get_logger("operator.processes")

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def shares(weights: Sequence[int]) -> tuple[list[int], list[int]]:
    """Indices for this process and for the child: the heaviest first, each to the lighter
    share so far (ties to this process). Each share is in the items' order."""
    mine: list[int] = []
    theirs: list[int] = []
    load = [0, 0]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        if load[0] <= load[1]:
            mine.append(index)
            load[0] += weights[index]
        else:
            theirs.append(index)
            load[1] += weights[index]
    return sorted(mine), sorted(theirs)


def map_in_processes(
    items: Sequence[T],
    work: Callable[[T], R],
    weights: Sequence[int],
    processes: int = 2,
    done: Callable[[], None] | None = None,
) -> list[R]:
    """``[work(item) for item in items]``, shared with one forked child process when
    ``processes`` is 2 or more (see the module's description). ``done`` is called once per
    item, in this process, when its result is in."""
    mine, theirs = shares(weights)
    if processes < 2 or not theirs or not hasattr(os, "fork") or usable_cpus() < 2:
        return [_counted(work, item, done) for item in items]
    results: dict[int, R] = {}
    reader, writer = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing buffered is written twice
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(reader)
        _child(items, work, theirs, writer)
    os.close(writer)
    try:
        for index in mine:
            results[index] = _counted(work, items[index], done)
        received: list[tuple[int, R]] | None = _receive(reader, pid)
    except BaseException:
        _stop(pid)
        raise
    finally:
        os.close(reader)
    if received is None:
        log.warning(
            "the second conversion process failed: its series are converted here",
            extra={"series": len(theirs)},
        )
        received = [(index, _counted(work, items[index], None)) for index in theirs]
    for index, result in received:
        results[index] = result
        if done is not None:
            done()
    return [results[index] for index in range(len(items))]


def _counted(work: Callable[[T], R], item: T, done: Callable[[], None] | None) -> R:
    result = work(item)
    if done is not None:
        done()
    return result


def _child(items: Sequence[T], work: Callable[[T], R], indices: list[int], writer: int) -> None:
    """Convert ``indices``, send the results through ``writer``, and exit (0 when sent)."""
    code = 1
    try:
        # A progress display may have replaced the standard streams with proxies whose
        # locks another thread of the parent held at the fork: write to the real ones.
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        results = [(index, work(items[index])) for index in indices]
        with os.fdopen(writer, "wb") as out:
            pickle.dump(results, out, protocol=pickle.HIGHEST_PROTOCOL)
        code = 0
    except BaseException:  # the parent converts these series itself and reports the error
        code = 1
    finally:
        os._exit(code)


def _receive(reader: int, pid: int) -> list[tuple[int, R]] | None:
    """The child's results, once it has exited; None when it failed."""
    try:
        with os.fdopen(reader, "rb", closefd=False) as source:
            received = pickle.load(source)
    except (EOFError, pickle.UnpicklingError, OSError, AttributeError, ImportError):
        received = None
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    return received  # type: ignore[no-any-return]


def _stop(pid: int) -> None:
    """End the child (this process is failing or interrupted) and reap it."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)
