"""``seriesflow status``: queues, consumers and dead letters; the latest jobs and their stage."""

from __future__ import annotations

from shared.broker import Broker, QueueStats
from shared.jobstore import JobInfo, JobStore

CONSUMING_SERVICES = ("parser", "selector", "exporter")


def queue_stats(broker: Broker) -> list[QueueStats]:
    stats = []
    for service in CONSUMING_SERVICES:
        try:
            stats.append(broker.stats(service))
        except Exception:  # the queue is not declared yet: the service never ran
            broker.close()
            stats.append(QueueStats(f"seriesflow.{service}", 0, 0, 0))
    return stats


def latest_jobs(jobs: JobStore, limit: int = 20) -> list[JobInfo]:
    """The ``limit`` most recently updated jobs (see :meth:`JobStore.list_jobs`)."""
    return jobs.list_jobs(limit)
