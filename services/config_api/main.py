"""Entry point of the config API.

``run(settings, stop)`` blocks: it refuses a non-loopback address when no token is
configured, connects the object store and RabbitMQ (retrying until they answer or
``stop`` is set), checks that the store honours conditional writes, and serves with
uvicorn on ``host:port`` (default 127.0.0.1:5000) until ``stop`` is set.
``seriesflow config-api`` runs it as a process.
"""

from __future__ import annotations

import threading

import uvicorn

from services.config_api.app import PRODUCER, create_app
from services.config_api.repository import ConfigRepository
from services.config_api.security import check_bind, parse_identifier_readers, parse_tokens
from services.config_api.settings import config_api_settings
from services.runtime import ServiceThread, connect_broker, connect_store
from shared.config import load_config
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.retention import start_retention_loop
from shared.settings import ServiceSettings

log = get_logger("config_api")


def run(settings: ServiceSettings, stop: threading.Event | None = None) -> None:
    """Serve until ``stop`` is set; a bad bind, token list or configuration fails at once."""
    config = config_api_settings(settings)
    stop = stop or threading.Event()
    tokens = parse_tokens(config.api_token, config.api_tokens)
    check_bind(config.host, tokens)
    parse_identifier_readers(config.api_identifier_readers, tokens)  # a typo fails at once
    static = load_config(config.config)
    store = connect_store(config, stop, Metrics(PRODUCER))
    if store is None:
        return
    ConfigRepository(store).check_conditional_writes()
    broker = connect_broker(config, PRODUCER, stop, store.metrics)
    if broker is None:
        return
    app = create_app(config, store, broker, static)
    start_retention_loop(config, JobStore(store), stop)
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_config=None, access_log=False)
    )

    def stop_when_asked() -> None:
        stop.wait()
        server.should_exit = True

    threading.Thread(target=stop_when_asked, name="config-api-stop", daemon=True).start()
    log.info("config API started", extra={"host": config.host, "port": config.port})
    store.metrics.serve_as_configured(config)
    try:
        server.run()
    finally:
        stop.set()
        broker.close()
        store.metrics.close()
        log.info("config API stopped")


class ConfigApiService(ServiceThread):
    """The config API in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(PRODUCER, run, settings)
