"""Stopping without losing an acknowledged instance: the drain.

On SIGTERM (a rolling restart, ``docker stop``, Kubernetes) the receiver stops accepting
connections at once, then gives the associations already open up to
``SERIESFLOW_DRAIN_SECONDS`` to finish: a sender in the middle of a study completes it and
releases, and its job is released as usual. Associations still open after that are ended
by the receiver; their acknowledged instances are quarantined (``ended: interrupted``),
never deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.logs import get_logger

log = get_logger("receiver")


def wait_for_associations(count: Callable[[], int], grace: float, poll: float = 0.1) -> int:
    """Wait until no established association is open (``count``), at most ``grace``
    seconds; how many are still open.

    Connections that have not yet been accepted as an association (no A-ASSOCIATE-RQ yet)
    do not hold the drain: they are ended with the rest."""
    deadline = time.monotonic() + grace
    running = count()
    if running:
        log.info(
            "draining: waiting for open associations to finish",
            extra={"associations": running, "grace_seconds": grace},
        )
    while running and time.monotonic() < deadline:
        time.sleep(poll)
        running = count()
    if running:
        log.warning(
            "drain time over: ending the associations still open; their instances are quarantined",
            extra={"associations": running},
        )
    else:
        log.info("drained: no association open")
    return running
