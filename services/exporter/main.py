"""Entry point of the exporter service.

``run(settings, stop)`` blocks: it loads the DICOM configuration file once (destinations
and the SCU AE title; destinations stored through the REST API apply from the next export
on, see :class:`shared.configstore.LiveConfig`), connects the object store and
RabbitMQ (retrying until they answer or ``stop`` is set) and consumes
``export.requested.#`` on the quorum queue ``seriesflow.exporter`` until ``stop`` is set.
``dicom > scu > max-associations`` (or ``SERIESFLOW_EXPORTER_WORKERS``) consumers run side
by side, each with its own broker connection and one export at a time; the exports at
once share ``max-associations`` associations (:class:`AssociationSlots`: an export alone
uses them all), as the Clara SCU allows that many simultaneous associations. More
processes are more competing consumers. :class:`ExporterService` runs
it in a thread (tests, embedding); ``seriesflow exporter`` runs it as a process, stopping
on SIGTERM or SIGINT after the exports in hand.
"""

from __future__ import annotations

import sys
import threading

from services.exporter.exporting import AssociationSlots, ExportOptions
from services.exporter.handlers import (
    BINDINGS,
    SERVICE,
    ConfiguredDestinations,
    Destinations,
    make_dead_letter_handler,
    make_handler,
)
from services.exporter.settings import ExporterSettings, exporter_settings
from services.runtime import ServiceThread, connect_broker, connect_store
from shared.config import load_config
from shared.configstore import LiveConfig
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.settings import ServiceSettings
from shared.store import ObjectStore

log = get_logger("exporter")
SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the interpreter lock while another waits (Python's: 0.005)."""


def _consume(
    settings: ExporterSettings,
    store: ObjectStore,
    destinations: Destinations,
    options: ExportOptions,
    stop: threading.Event,
) -> None:
    broker = connect_broker(settings, SERVICE, stop, store.metrics)
    if broker is None:
        return
    try:
        handler = make_handler(JobStore(store), broker, destinations, settings, options)
        given_up = make_dead_letter_handler(JobStore(store), broker, settings)
        broker.consume(SERVICE, BINDINGS, handler, stop, on_dead_letter=given_up)
    finally:
        broker.close()


def run(settings: ServiceSettings, stop: threading.Event | None = None) -> None:
    """Run the exporter until ``stop`` is set (a bad configuration file fails at once)."""
    config = exporter_settings(settings)
    stop = stop or threading.Event()
    # The sending threads mostly wait on their sockets; one that wakes with a response
    # needs the interpreter lock, which a download thread otherwise holds for up to the
    # default 5 ms switch interval: per file, on every association.
    sys.setswitchinterval(SWITCH_INTERVAL)
    dicom_config = load_config(config.config)
    scu = dicom_config.dicom.scu
    max_pdu = getattr(scu, "max_pdu_size", None)
    workers = config.exporter_workers or scu.max_associations
    # max-associations is shared between the exports at once and each one's associations:
    # an export alone may use them all (unless SERIESFLOW_EXPORTER_ASSOCIATIONS is set)
    options = ExportOptions.from_settings(
        config,
        max_pdu if isinstance(max_pdu, int) else None,
        scu.max_associations,
        AssociationSlots(max(scu.max_associations, workers)),
    )
    store = connect_store(config, stop, Metrics(SERVICE))
    if store is None:
        return
    destinations = ConfiguredDestinations(LiveConfig(store, dicom_config))
    log.info(
        "exporter started",
        extra={
            "ae_title": scu.ae_title,
            "destinations": [d.name for d in scu.destinations],
            "workers": workers,
            "associations_per_export": options.associations,
        },
    )
    store.metrics.serve_as_configured(config)
    try:
        if workers == 1:
            _consume(config, store, destinations, options, stop)
            return
        threads = [
            threading.Thread(
                target=_consume,
                args=(config, store, destinations, options, stop),
                name=f"{SERVICE}-{n}",
                daemon=True,
            )
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        while not stop.is_set() and any(t.is_alive() for t in threads):
            stop.wait(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        store.metrics.close()
        log.info("exporter stopped")


class ExporterService(ServiceThread):
    """The exporter in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(SERVICE, run, settings)

    def stop(self, timeout: float = 60.0) -> None:
        super().stop(timeout)
