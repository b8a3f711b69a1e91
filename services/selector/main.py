"""Entry point of the selector service.

``run(settings, stop)`` blocks: it loads the pipeline registry once, connects the object
store (creating the bucket if needed) and RabbitMQ, retrying both until they answer or
``stop`` is set, then consumes ``job.parsed.#`` on the quorum queue
``seriesflow.selector`` until ``stop`` is set. :class:`SelectorService` runs it in a thread
(tests, embedding); ``seriesflow selector`` runs it as a process, stopping on SIGTERM or
SIGINT after the message in hand.
"""

from __future__ import annotations

import threading

from services.runtime import ServiceThread
from services.selector.handlers import BINDINGS, SERVICE, SelectorHandler
from services.selector.settings import selector_settings
from services.stage import run_stage
from shared.settings import ServiceSettings


def run(settings: ServiceSettings, stop: threading.Event | None = None) -> None:
    """Run the selector until ``stop`` is set (a bad pipeline folder fails at once)."""
    run_stage(selector_settings(settings), stop or threading.Event(), SelectorHandler, BINDINGS)


class SelectorService(ServiceThread):
    """The selector in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(SERVICE, run, settings)
