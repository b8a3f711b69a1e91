"""shared/metrics.py: what each call counts, the labels it uses, and the HTTP endpoint."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import TransientError
from shared.metrics import Metrics, serve_metrics
from shared.settings import ServiceSettings
from shared.store import ObjectStore


def value(metrics: Metrics, sample: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return None


def test_cstore_statuses_are_counted_by_hexadecimal_code_and_returned() -> None:
    metrics = Metrics("receiver")
    assert metrics.cstore_answered(0x0000) == 0x0000
    assert metrics.cstore_answered(0xA700) == 0xA700
    metrics.cstore_answered(0x0000)
    assert value(metrics, "seriesflow_cstore_responses_total", status="0x0000") == 2
    assert value(metrics, "seriesflow_cstore_responses_total", status="0xA700") == 1


def test_instances_and_bytes_received() -> None:
    metrics = Metrics("receiver")
    metrics.instance_received(1000)
    metrics.instance_received(24)
    assert value(metrics, "seriesflow_instances_received_total") == 2
    assert value(metrics, "seriesflow_received_bytes_total") == 1024


def test_open_associations_are_read_when_scraped() -> None:
    metrics = Metrics("receiver")
    open_now = [1, 2, 3]
    metrics.track_open_associations(lambda: len(open_now))
    assert value(metrics, "seriesflow_associations_open") == 3
    open_now.clear()
    assert value(metrics, "seriesflow_associations_open") == 0


def test_a_completed_job_observes_its_latency_a_failed_one_does_not() -> None:
    metrics = Metrics("parser")
    metrics.job_finished("parser", "completed", datetime.now(UTC) - timedelta(seconds=3))
    metrics.job_finished("parser", "failed", datetime.now(UTC) - timedelta(seconds=3))
    assert value(metrics, "seriesflow_jobs_total", stage="parser", outcome="completed") == 1
    assert value(metrics, "seriesflow_jobs_total", stage="parser", outcome="failed") == 1
    assert value(metrics, "seriesflow_stage_latency_seconds_count", stage="parser") == 1
    seconds = value(metrics, "seriesflow_stage_latency_seconds_sum", stage="parser")
    assert seconds is not None and 3 <= seconds < 60
    assert value(metrics, "seriesflow_stage_latency_seconds_bucket", stage="parser", le="2.5") == 0
    assert value(metrics, "seriesflow_stage_latency_seconds_bucket", stage="parser", le="5.0") == 1


def test_a_naive_timestamp_is_taken_as_utc_and_a_clock_ahead_counts_zero() -> None:
    metrics = Metrics("selector")
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    metrics.job_finished("selector", "completed", naive)
    metrics.job_finished("selector", "completed", datetime.now(UTC) + timedelta(hours=1))
    seconds = value(metrics, "seriesflow_stage_latency_seconds_sum", stage="selector")
    assert seconds is not None and 1 <= seconds < 60


def test_an_export_counts_the_job_and_each_file_status() -> None:
    metrics = Metrics("exporter")
    since = datetime.now(UTC)
    metrics.export_finished("succeeded", ["sent", "sent", "failed"], since)
    metrics.export_finished("failed", ["skipped"], since)
    assert value(metrics, "seriesflow_jobs_total", stage="exporter", outcome="completed") == 1
    assert value(metrics, "seriesflow_jobs_total", stage="exporter", outcome="failed") == 1
    assert value(metrics, "seriesflow_export_files_total", status="sent") == 2
    assert value(metrics, "seriesflow_export_files_total", status="failed") == 1
    assert value(metrics, "seriesflow_export_files_total", status="skipped") == 1


def test_broker_and_store_counts_carry_the_service_and_a_fixed_vocabulary() -> None:
    metrics = Metrics("parser")
    metrics.published("job.parsed")
    metrics.retried()
    metrics.dead_lettered("rabbitmq")
    metrics.broker_error("connection_lost")
    metrics.store_error(TransientError("put jobs/x: object store unreachable (ConnectionError)"))
    text = metrics.exposition().decode()
    published = value(
        metrics, "seriesflow_events_published_total", service="parser", type="job.parsed"
    )
    assert published == 1
    assert value(metrics, "seriesflow_retries_total", service="parser") == 1
    assert value(metrics, "seriesflow_dead_letters_total", service="parser", by="rabbitmq") == 1
    assert (
        value(metrics, "seriesflow_broker_errors_total", service="parser", kind="connection_lost")
        == 1
    )
    errors = value(
        metrics, "seriesflow_store_errors_total", service="parser", error="TransientError"
    )
    assert errors == 1
    assert "jobs/x" not in text  # the error's class, never its message


def test_two_services_in_one_process_keep_their_counts_apart() -> None:
    receiver, parser = Metrics("receiver"), Metrics("parser")
    receiver.instance_received(10)
    assert value(receiver, "seriesflow_instances_received_total") == 1
    assert value(parser, "seriesflow_instances_received_total") == 0


def test_served_over_http_and_off_when_the_port_is_zero() -> None:
    off = serve_metrics("parser", ServiceSettings(metrics_port=0))
    assert off._server is None
    metrics = Metrics("parser")
    port = metrics.serve(0)
    assert port is not None
    try:
        metrics.instance_received(5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "seriesflow_instances_received_total 1.0" in text
    finally:
        metrics.close()


def test_a_port_in_use_leaves_the_service_running_without_metrics() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = Metrics("parser")
        assert metrics.serve(taken.getsockname()[1]) is None
        metrics.close()


def _metric_names() -> set[str]:
    """Every sample name the registry can produce (counters with ``_total``)."""
    names: set[str] = set()
    for family in Metrics("any").registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum")}
        else:
            names.add(family.name)
    return names


def test_the_dashboard_and_the_docs_name_only_metrics_that_exist_and_the_docs_all() -> None:
    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "deploy/grafana/seriesflow-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bseriesflow_[a-z_]+", e)}
    known = _metric_names()
    assert used and used <= known, used - known
    docs = (root / "docs/metrics.md").read_text()
    documented = set(re.findall(r"`(seriesflow_[a-z_]+)`", docs))
    listed = {n for n in known if not n.endswith(("_bucket", "_count", "_sum"))}
    listed |= {"seriesflow_stage_latency_seconds"}
    listed -= {n for n in listed if n.startswith("seriesflow_stage_latency_seconds_")}
    assert documented >= listed, listed - documented
    assert {m for m in documented if m != "seriesflow_jobs"} <= known | listed


def test_an_unreachable_object_store_is_counted_once_per_failed_operation() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    metrics = Metrics("parser")
    settings = ServiceSettings(s3_endpoint=f"127.0.0.1:{port}")
    store = ObjectStore(settings, timeout=1.0, metrics=metrics)
    with pytest.raises(TransientError):
        store.get_bytes("jobs/x/manifest.json")
    errors = value(
        metrics, "seriesflow_store_errors_total", service="parser", error="TransientError"
    )
    assert errors == 1
    assert "jobs/x" not in metrics.exposition().decode()
