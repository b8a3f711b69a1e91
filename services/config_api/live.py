"""Live configuration for the receiver and exporter: the store's objects over the file's.

``load_live_config(store, base)`` returns ``base`` (the static configuration file) with
the AE titles, sources and destinations the API stored merged in. **The store wins**: a
stored AE title replaces the file's entry with the same AE title, a stored destination the
file's entry with the same name; sources are the union (a source is a pair of AE title
and host). Entries only in the file stay: the API cannot delete them. Call it again on
every ``config.changed`` (and, as a safety net, periodically). A stored object that no
longer validates is skipped and logged, never applied half.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from services.config_api.repository import ConfigRepository
from shared.config import AETitleConfig, DestinationConfig, SeriesflowConfig, SourceConfig
from shared.errors import SeriesflowError
from shared.logs import get_logger
from shared.pipelines import Pipeline, parse_pipeline
from shared.store import ObjectStore

log = get_logger("config_api.live")


def _valid(kind: str, name: str, build: Any, spec: dict[str, Any]) -> Any:
    try:
        return build(spec)
    except (ValueError, SeriesflowError):
        log.error(
            "stored configuration skipped: not valid", extra={"kind": kind, "object_name": name}
        )
        return None


def load_live_config(store: ObjectStore, base: SeriesflowConfig) -> SeriesflowConfig:
    """``base`` with the stored AE titles, sources and destinations (stored ones win)."""
    repo = ConfigRepository(store)
    titles = {a.ae_title: a for a in base.dicom.scp.ae_titles}
    for item in repo.list_objects("ae-titles"):
        ae = _valid("ae-titles", item.name, AETitleConfig.model_validate, item.spec)
        if ae is not None:
            titles[ae.ae_title] = ae
    sources = {(s.ae_title, s.host_ip): s for s in base.dicom.scp.sources}
    for item in repo.list_objects("sources"):
        source = _valid("sources", item.name, SourceConfig.model_validate, item.spec)
        if source is not None:
            sources[(source.ae_title, source.host_ip)] = source
    destinations = {d.name: d for d in base.dicom.scu.destinations}
    for item in repo.list_objects("destinations"):
        dest = _valid("destinations", item.name, DestinationConfig.model_validate, item.spec)
        if dest is not None:
            destinations[dest.name] = dest
    scp = base.dicom.scp.model_copy(
        update={"ae_titles": tuple(titles.values()), "sources": tuple(sources.values())}
    )
    scu = base.dicom.scu.model_copy(update={"destinations": tuple(destinations.values())})
    return base.model_copy(update={"dicom": base.dicom.model_copy(update={"scp": scp, "scu": scu})})


def load_live_pipelines(store: ObjectStore) -> list[Pipeline]:
    """The pipelines stored through the API (valid ones; others are logged and skipped)."""
    pipelines = []
    for item in ConfigRepository(store).list_objects("pipelines"):
        pipeline = _valid(
            "pipelines",
            item.name,
            lambda spec, name=item.name: parse_pipeline(spec, f"stored pipeline {name!r}"),
            item.spec,
        )
        if pipeline is not None:
            pipelines.append(pipeline)
    return pipelines


class LiveConfig:
    """The configuration in force: the static file with the store's objects over it.

    :meth:`current` re-reads the store only when something under ``config/`` changed (a
    listing of keys and modification times, at most once every ``check_seconds``), so it
    is cheap to call per association or per export. Thread-safe.
    """

    def __init__(
        self, store: ObjectStore, static: SeriesflowConfig, check_seconds: float = 1.0
    ) -> None:
        self.store = store
        self.static = static
        self.check_seconds = check_seconds
        self._config = static
        self._fingerprint: tuple[tuple[str, object], ...] = ()
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> SeriesflowConfig:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.check_seconds:
                return self._config
            self._checked = now
            try:
                fingerprint = tuple(
                    sorted(
                        item
                        for item in self.store.list_with_times("config/")
                        if not item[0].startswith("config/audit/")
                    )
                )
                if fingerprint != self._fingerprint:
                    self._config = load_live_config(self.store, self.static)
                    self._fingerprint = fingerprint
            except SeriesflowError as exc:
                log.warning(
                    "stored configuration not read; keeping the current one",
                    extra={"reason": exc.reason},
                )
            return self._config
