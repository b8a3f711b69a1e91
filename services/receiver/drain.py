"""Stopping without losing an acknowledged instance: the drain.

On SIGTERM (a rolling restart, ``docker stop``, Kubernetes) the receiver stops accepting
connections at once, then gives the associations already open up to
``SERIESFLOW_DRAIN_SECONDS`` to finish: a sender in the middle of a study completes it and
releases, and its job is released as usual. Associations still open after that are ended
by the receiver; their acknowledged instances are quarantined (``ended: interrupted``),
never deleted.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import time
from typing import Any

from shared.logs import get_logger

log = get_logger("receiver")


def open_acceptors(ae: Any) -> list[Any]:
    """The associations peers opened with us that are still running."""
    return [a for a in ae.active_associations if getattr(a, "is_acceptor", False)]


def wait_for_associations(ae: Any, grace: float, poll: float = 0.1) -> int:
    """Wait until no association peers opened is running, at most ``grace`` seconds;
    how many are still running."""
    deadline = time.monotonic() + grace
    running = open_acceptors(ae)
    if running:
        log.info(
            "draining: waiting for open associations to finish",
            extra={"associations": len(running), "grace_seconds": grace},
        )
    while running and time.monotonic() < deadline:
        time.sleep(poll)
        running = open_acceptors(ae)
    if running:
        log.warning(
            "drain time over: ending the associations still open; their instances are quarantined",
            extra={"associations": len(running)},
        )
    return len(running)
