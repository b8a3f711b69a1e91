"""Service-mode benchmarks, each against a peer in the same run on the same data.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_service.py [--runs 5] [--slices 300] [--size 512]

1. **Receive throughput**, instances per second: seriesflow's receiver, which stores every
   instance durably in S3 (SeaweedFS) before it answers success, against dcmtk ``storescp``
   writing to disk with ``TCP_NODELAY=1``. The same ``storescu`` (also ``TCP_NODELAY=1``)
   sends the same generated CT series to each, alternating. Target: at least 0.5x.
2. **End-to-end latency**: from the end of the association (``storescu`` returning after
   its release) to ``selected-images.json`` being in the store (the ``job.selected`` event
   is published right after it is written), with receiver, parser and selector running as
   separate processes. Target: median at most 2 s.

Medians over ``--runs`` runs, after one uncounted warm-up. Results go to
``bench/results/service.json``. A missed target is a measurement: the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.broker import Broker  # noqa: E402
from shared.events import Envelope  # noqa: E402
from shared.samples import write_ct_series  # noqa: E402
from shared.settings import ServiceSettings  # noqa: E402
from tests.integration.infra import (  # noqa: E402
    dcmtk,
    dcmtk_available,
    free_port,
    rabbitmq_vhost,
    start_seaweedfs,
    wait_for_port,
)
from tests.integration.processes import ServiceProcess, StoreSCP, service_environment  # noqa: E402

RESULTS = REPO / "bench" / "results" / "service.json"
THROUGHPUT_TARGET = 0.5
LATENCY_TARGET_SECONDS = 2.0


def storescu(port: int, called: str, folder: Path) -> float:
    """Send every file below ``folder``; seconds from start to the association's release."""
    env = dict(os.environ, TCP_NODELAY="1")
    start = time.perf_counter()
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "--aetitle",
            "MODALITY",
            "--call",
            called,
            "--scan-directories",
            "--required",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def write_config(path: Path, port: int, fmt_pipeline: Path) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "dicom": {
                    "scp": {
                        "host": "127.0.0.1",
                        "port": port,
                        "ae-titles": [{"ae-title": "SERIESFLOW"}],
                        "max-associations": 4,
                        "reject-unknown-sources": False,
                    }
                },
                "pipeline-mappings": [{"name": "bench", "clara-ae-title": "SERIESFLOW"}],
            }
        )
    )
    fmt_pipeline.mkdir(parents=True, exist_ok=True)
    (fmt_pipeline / "bench.yaml").write_text(
        yaml.safe_dump({"name": "bench", "image-format": "nii"})
    )


def wait_for_selected(broker: Broker, timeout: float = 120.0) -> float:
    """Block until a job.selected arrives on the observer queue; return its arrival time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, _, body = broker.channel.basic_get("seriesflow.bench-observer", auto_ack=True)
        if method is not None and Envelope.from_bytes(body).type == "job.selected":
            return time.perf_counter()
        if method is None:
            time.sleep(0.005)
    raise TimeoutError("no job.selected within the time limit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    if not (dcmtk_available("storescu") and dcmtk_available("storescp")):
        print("dcmtk (storescu, storescp) is not installed: bash scripts/setup.sh", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-service-"))
    s3 = start_seaweedfs(work / "s3")
    try:
        with rabbitmq_vhost() as amqp:
            return run(args, work, s3.endpoint, s3.access_key, s3.secret_key, amqp)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace, work: Path, endpoint: str, access: str, secret: str, amqp: str
) -> int:
    ct = work / "ct"
    write_ct_series(ct, slices=args.slices, size=args.size, seed=5)
    settings = ServiceSettings(
        amqp_url=SecretStr(amqp),
        s3_endpoint=endpoint,
        s3_access_key=SecretStr(access),
        s3_secret_key=SecretStr(secret),
        s3_bucket="bench",
        s3_secure=False,
    )
    port = free_port()
    config, pipelines = work / "config.yaml", work / "pipelines"
    write_config(config, port, pipelines)
    env = service_environment(settings, config, pipelines)
    env["SERIESFLOW_LOG_LEVEL"] = "WARNING"
    logs = work / "logs"
    logs.mkdir()

    # 1. Receive throughput: the receiver alone, against storescp writing to disk.
    receiver = ServiceProcess("receiver", env, logs).start()
    wait_for_port(port, 60)
    storescp = StoreSCP(work / "storescp-out", "STORESCP").start()
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for run_index in range(args.runs + 1):
            shutil.rmtree(storescp.directory, ignore_errors=True)
            storescp.directory.mkdir()
            pair: list[tuple[str, Callable[[], float]]] = [
                ("seriesflow", lambda: storescu(port, "SERIESFLOW", ct)),
                ("storescp", lambda: storescu(storescp.port, "STORESCP", ct)),
            ]
            if run_index % 2:
                pair.reverse()
            for name, send in pair:
                seconds = send()
                if run_index:  # the first round is the warm-up
                    (ours if name == "seriesflow" else theirs).append(seconds)
            print(f"receive run {run_index}/{args.runs} done", file=sys.stderr)
    finally:
        storescp.stop()

    # 2. Latency: receiver + parser + selector, release -> selected-images.json.
    broker = Broker(settings, "bench")
    broker.connect(attempts=3)
    broker.declare_service_queue("bench-observer", ["job.selected.#"])
    workers = [ServiceProcess(name, env, logs).start() for name in ("parser", "selector")]
    latencies: list[float] = []
    try:
        for run_index in range(args.runs + 1):
            storescu(port, "SERIESFLOW", ct)
            released = time.perf_counter()
            arrived = wait_for_selected(broker)
            if run_index:
                latencies.append(arrived - released)
            print(
                f"latency run {run_index}/{args.runs}: {arrived - released:.2f} s", file=sys.stderr
            )
    finally:
        for process in [receiver, *workers]:
            process.stop()
        broker.close()

    files = args.slices
    report: dict[str, Any] = {
        "input": {"files": files, "size": args.size, "runs": args.runs},
        "receive": {
            "seriesflow_seconds": ours,
            "storescp_seconds": theirs,
            "seriesflow_instances_per_second": files / statistics.median(ours),
            "storescp_instances_per_second": files / statistics.median(theirs),
        },
        "latency_seconds": latencies,
    }
    ratio = statistics.median(theirs) / statistics.median(ours)
    report["receive"]["ratio"] = ratio
    latency = statistics.median(latencies)
    report["latency_median_seconds"] = latency
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print()
    print(
        f"receive  seriesflow  {report['receive']['seriesflow_instances_per_second']:8.1f} "
        f"instances/s   (median {statistics.median(ours):.2f} s for {files})"
    )
    print(
        f"receive  storescp    {report['receive']['storescp_instances_per_second']:8.1f} "
        f"instances/s   (median {statistics.median(theirs):.2f} s)"
    )
    print(
        f"{'PASS' if ratio >= THROUGHPUT_TARGET else 'MISS'}  receive throughput ratio "
        f"{ratio:.2f} (target >= {THROUGHPUT_TARGET})"
    )
    print(
        f"{'PASS' if latency <= LATENCY_TARGET_SECONDS else 'MISS'}  release -> "
        f"selected-images.json median {latency:.2f} s (target <= {LATENCY_TARGET_SECONDS} s; "
        f"runs: {', '.join(f'{v:.2f}' for v in latencies)})"
    )
    print(f"results written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
