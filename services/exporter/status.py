"""What a C-STORE response means for one file, and what an attempt means for the export.

Both are plain functions returning named outcomes, so the rules sit in one place and are
tested without a network.

C-STORE response status (PS3.4 B.2.3, PS3.7 C):

=====================================  ===========  =========================================
status                                 outcome      why
=====================================  ===========  =========================================
``0x0000``                             CONFIRMED    success
``0x0001``, ``0x0107``, ``0x0116``,    CONFIRMED    warning: the SCP stored the instance
``0xB000``-``0xBFFF``                               (coerced, elements discarded...)
no response (timeout, abort, lost      RESEND       nothing is known: re-associate, send
connection, invalid response)                       again
``0xA700``-``0xA7FF``                  BUSY         out of resources: this attempt fails
                                                    the file, a later attempt may not
anything else (``0xA9xx``, ``0xCxxx``,  REFUSED      the SCP refuses this file; retrying
``0x0122``, ``0x0117``, ``0x0124``,                 cannot help
``0x0210``...``0x0212``, unknown)
=====================================  ===========  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class StoreOutcome(Enum):
    CONFIRMED = "confirmed"
    RESEND = "resend"
    BUSY = "busy"
    REFUSED = "refused"


_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})
_NAMES = {
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0210: "duplicate invocation",
    0x0211: "unrecognised operation",
    0x0212: "mistyped argument",
    0x0001: "attribute list warning",
    0x0107: "attribute list warning",
    0x0116: "attribute value out of range",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


def status_text(status: int) -> str:
    """``0xA900 (data set does not match SOP class)`` and the like."""
    if status in _NAMES:
        name = _NAMES[status]
    elif 0xA700 <= status <= 0xA7FF:
        name = "out of resources"
    elif 0xA900 <= status <= 0xA9FF:
        name = "data set does not match SOP class"
    elif 0xC000 <= status <= 0xCFFF:
        name = "cannot understand"
    elif 0xB000 <= status <= 0xBFFF:
        name = "warning"
    else:
        name = "unknown status"
    return f"0x{status:04X} ({name})"


def classify_store_status(status: int | None) -> StoreOutcome:
    """The outcome of a C-STORE whose response carried ``status`` (None: no response)."""
    if status is None:
        return StoreOutcome.RESEND
    if status == 0x0000 or status in _WARNINGS or 0xB000 <= status <= 0xBFFF:
        return StoreOutcome.CONFIRMED
    if 0xA700 <= status <= 0xA7FF:
        return StoreOutcome.BUSY
    return StoreOutcome.REFUSED


class Decision(Enum):
    """What the handler does once an attempt is over."""

    SUCCEEDED = "succeeded"  # publish export.completed "succeeded", acknowledge
    RETRY = "retry"  # more than half failed, some transiently: the broker retries later
    GIVE_UP = "give_up"  # as RETRY, but this was the last allowed delivery
    FAILED = "failed"  # more than half failed, none transiently: retrying cannot help


@dataclass(frozen=True)
class Tally:
    total: int
    confirmed: int
    transient_failures: int  # not confirmed, and a later attempt may succeed

    @property
    def unconfirmed(self) -> int:
        return self.total - self.confirmed


def decide(tally: Tally, delivery_count: int, delivery_limit: int) -> Decision:
    """The Clara rule: an export fails only when more than half of its files failed.

    ``delivery_count`` is 0 on the first delivery; the broker allows ``delivery_limit``.
    """
    if tally.unconfirmed * 2 <= tally.total:
        return Decision.SUCCEEDED
    if tally.transient_failures == 0:
        return Decision.FAILED
    if delivery_count + 1 >= delivery_limit:
        return Decision.GIVE_UP
    return Decision.RETRY
