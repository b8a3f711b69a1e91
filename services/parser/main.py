"""Entry point of the parser service.

``run(settings, stop)`` blocks: it loads the pipeline registry once, connects the object
store (creating the bucket if needed) and RabbitMQ, retrying both until they answer or
``stop`` is set, then consumes ``job.received.#`` on the quorum queue
``seriesflow.parser`` until ``stop`` is set. :class:`ParserService` runs it in a thread
(tests, embedding); ``seriesflow parser`` runs it as a process, stopping on SIGTERM or
SIGINT after the message in hand.
"""

from __future__ import annotations

import threading

from services.parser.handlers import BINDINGS, SERVICE, ParserHandler
from services.parser.settings import parser_settings
from services.runtime import ServiceThread
from services.stage import run_stage
from shared.settings import ServiceSettings
from shared.workdir import sweep_work_folders


def run(settings: ServiceSettings, stop: threading.Event | None = None) -> None:
    """Run the parser until ``stop`` is set (a bad pipeline folder fails at once)."""
    sweep_work_folders(parser_settings(settings).work_dir)  # what a killed parser left
    run_stage(parser_settings(settings), stop or threading.Event(), ParserHandler, BINDINGS)


class ParserService(ServiceThread):
    """The parser in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(SERVICE, run, settings)
