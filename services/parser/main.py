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
from services.runtime import ServiceThread, connect_broker, connect_store
from shared.logs import get_logger
from shared.pipelines import PipelineRegistry
from shared.settings import ServiceSettings

log = get_logger("parser")


def run(settings: ServiceSettings, stop: threading.Event | None = None) -> None:
    """Run the parser until ``stop`` is set (a bad pipeline folder fails at once)."""
    config = parser_settings(settings)
    stop = stop or threading.Event()
    registry = PipelineRegistry.load(config.pipelines)
    store = connect_store(config, stop)
    if store is None:
        return
    broker = connect_broker(config, SERVICE, stop)
    if broker is None:
        return
    handler = ParserHandler(store, broker, registry, config)
    log.info("parser started", extra={"pipelines": [p.name for p in registry.all()]})
    try:
        broker.consume(SERVICE, BINDINGS, handler, stop)
    finally:
        broker.close()
        log.info("parser stopped")


class ParserService(ServiceThread):
    """The parser in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(SERVICE, run, settings)
