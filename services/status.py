"""``seriesflow status``: queues, consumers and dead letters; the latest jobs and their stage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.broker import Broker, QueueStats
from shared.store import ObjectStore

CONSUMING_SERVICES = ("parser", "selector", "exporter")
STAGES = ("received", "parsed", "selected", "failed")


@dataclass(frozen=True)
class JobStage:
    job_id: str
    stage: str
    updated: datetime
    exports: int


def queue_stats(broker: Broker) -> list[QueueStats]:
    stats = []
    for service in CONSUMING_SERVICES:
        try:
            stats.append(broker.stats(service))
        except Exception:  # the queue is not declared yet: the service never ran
            broker.close()
            stats.append(QueueStats(f"seriesflow.{service}", 0, 0, 0))
    return stats


def latest_jobs(store: ObjectStore, limit: int = 20) -> list[JobStage]:
    """The ``limit`` most recently updated jobs, from the events they stored."""
    jobs: dict[str, dict[str, datetime]] = {}
    for key, modified in store.list_with_times("jobs/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "events" and parts[3].endswith(".json"):
            jobs.setdefault(parts[1], {})[parts[3][: -len(".json")]] = modified
    result = []
    for job_id, events in jobs.items():
        stage = next((s for s in reversed(STAGES) if s in events), "unknown")
        if "failed" in events:
            stage = "failed"
        exports = sum(1 for name in events if name.startswith("export"))
        result.append(JobStage(job_id, stage, max(events.values()), exports))
    result.sort(key=lambda j: j.updated, reverse=True)
    return result[:limit]
