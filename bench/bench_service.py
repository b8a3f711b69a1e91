"""Service-mode benchmarks, each against a peer in the same run on the same data.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_service.py [--runs 5] [--slices 300] [--size 512]

1. **Receive throughput**, instances per second: seriesflow's receiver, which stores every
   instance durably in S3 (SeaweedFS) before it answers success, against dcmtk ``storescp``
   writing to disk with ``TCP_NODELAY=1``. The same ``storescu`` (also ``TCP_NODELAY=1``)
   sends the same generated CT series to each, alternating. Target: at least 0.5x.
   Then **4 ``storescu`` at once** to each side (4 different studies of a quarter of the
   slices each, so the same number of instances; ``storescp --fork`` serves them in
   parallel, as the receiver does).
2. **End-to-end latency**: from the end of the association (``storescu`` returning after
   its release) to ``selected-images.json`` being in the store (the ``job.selected`` event
   is published right after it is written), with receiver, parser and selector running as
   separate processes at the default INFO log level. Target: median at most 1.5 s. Where
   the time goes is read from the services' own log lines (job released, job parsed, job
   selected) and printed as medians.

Medians over ``--runs`` runs, after one uncounted warm-up. Results go to
``bench/results/service.json``. A missed target is a measurement: the exit status is 0.
"""

from __future__ import annotations

import argparse
import datetime
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
from tests.integration.processes import ServiceProcess, service_environment  # noqa: E402

RESULTS = REPO / "bench" / "results" / "service.json"
THROUGHPUT_TARGET = 0.5
LATENCY_TARGET_SECONDS = 1.5
CONCURRENT = 4


def storescu_command(port: int, called: str, folder: Path) -> list[str]:
    return [
        *(dcmtk("storescu"), "--aetitle", "MODALITY", "--call", called),
        *("--scan-directories", "--required", "127.0.0.1", str(port), str(folder)),
    ]


def storescu(port: int, called: str, folder: Path) -> float:
    """Send every file below ``folder``; seconds from start to the association's release."""
    return storescu_at_once(port, called, [folder])


def storescu_at_once(port: int, called: str, folders: list[Path]) -> float:
    """One ``storescu`` per folder, all started together; seconds until the last returns."""
    env = dict(os.environ, TCP_NODELAY="1")
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            storescu_command(port, called, folder),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for folder in folders
    ]
    failed = []
    for process in processes:
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            failed.append(err.decode(errors="replace")[-1000:])
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"storescu failed: {failed[0]}")
    return elapsed


class ForkingStoreSCP:
    """dcmtk ``storescp --fork`` (one process per association), ``TCP_NODELAY=1``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *(dcmtk("storescp"), "--fork", "--aetitle", "STORESCP"),
                *("-od", str(directory), str(self.port)),
            ],
            env=dict(os.environ, TCP_NODELAY="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def log_times(path: Path, message: str) -> dict[str, float]:
    """job_id -> epoch seconds of the first log line with this message."""
    found: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        if f'"{message}"' not in line:
            continue
        try:
            record = json.loads(line)
            at = datetime.datetime.fromisoformat(record["time"]).timestamp()
            found.setdefault(record["job_id"], at)
        except (ValueError, KeyError):
            continue
    return found


def bench_settings(
    amqp: str, endpoint: str, access: str, secret: str, bucket: str
) -> ServiceSettings:
    """Settings for a benchmark's own RabbitMQ vhost and SeaweedFS bucket."""
    return ServiceSettings(
        amqp_url=SecretStr(amqp),
        s3_endpoint=endpoint,
        s3_access_key=SecretStr(access),
        s3_secret_key=SecretStr(secret),
        s3_bucket=bucket,
        s3_secure=False,
    )


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


def wait_for_selected(broker: Broker, timeout: float = 120.0) -> tuple[float, str]:
    """Block until a job.selected arrives on the observer queue; its arrival time and job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, _, body = broker.channel.basic_get("seriesflow.bench-observer", auto_ack=True)
        if method is not None:
            envelope = Envelope.from_bytes(body)
            if envelope.type == "job.selected":
                return time.perf_counter(), envelope.job_id
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
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f}; timings may be noisy", file=sys.stderr)
    ct = work / "ct"
    write_ct_series(ct, slices=args.slices, size=args.size, seed=5)
    quarters = []
    for n in range(CONCURRENT):
        folder = work / f"ct-{n}"
        write_ct_series(
            folder, slices=max(1, args.slices // CONCURRENT), size=args.size, seed=11 + n
        )
        quarters.append(folder)
    settings = bench_settings(amqp, endpoint, access, secret, "bench")
    port = free_port()
    config, pipelines = work / "config.yaml", work / "pipelines"
    write_config(config, port, pipelines)
    env = service_environment(settings, config, pipelines)
    env["SERIESFLOW_LOG_LEVEL"] = "WARNING"  # no per-instance log lines while timing
    logs = work / "logs"
    logs.mkdir()

    # 1. Receive throughput: the receiver alone, against storescp writing to disk.
    receiver = ServiceProcess("receiver", env, logs).start()
    wait_for_port(port, 60)
    storescp = ForkingStoreSCP(work / "storescp-out")
    times: dict[str, list[float]] = {
        "seriesflow": [],
        "storescp": [],
        "seriesflow_x4": [],
        "storescp_x4": [],
    }
    try:
        for run_index in range(args.runs + 1):
            storescp.clear()
            pair: list[tuple[str, Callable[[], float]]] = [
                ("seriesflow", lambda: storescu(port, "SERIESFLOW", ct)),
                ("storescp", lambda: storescu(storescp.port, "STORESCP", ct)),
                ("seriesflow_x4", lambda: storescu_at_once(port, "SERIESFLOW", quarters)),
                ("storescp_x4", lambda: storescu_at_once(storescp.port, "STORESCP", quarters)),
            ]
            if run_index % 2:
                pair.reverse()
            for name, send in pair:
                seconds = send()
                if run_index:  # the first round is the warm-up
                    times[name].append(seconds)
            print(f"receive run {run_index}/{args.runs} done", file=sys.stderr)
    finally:
        storescp.stop()
        receiver.stop()

    # 2. Latency: receiver + parser + selector at INFO, release -> selected-images.json.
    env["SERIESFLOW_LOG_LEVEL"] = "INFO"
    latency_logs = work / "latency-logs"
    latency_logs.mkdir()
    broker = Broker(settings, "bench")
    broker.connect(attempts=3)
    broker.declare_service_queue("bench-observer", ["job.selected.#"])
    services = [
        ServiceProcess(n, env, latency_logs).start() for n in ("receiver", "parser", "selector")
    ]
    wait_for_port(port, 60)
    latencies: list[float] = []
    released_at: dict[str, float] = {}
    try:
        for run_index in range(args.runs + 1):
            storescu(port, "SERIESFLOW", ct)
            released, wall = time.perf_counter(), time.time()
            arrived, job = wait_for_selected(broker)
            if run_index:
                latencies.append(arrived - released)
                released_at[job] = wall
            print(
                f"latency run {run_index}/{args.runs}: {arrived - released:.2f} s", file=sys.stderr
            )
    finally:
        for process in services:
            process.stop()
        broker.close()
    stages = stage_medians(latency_logs, released_at)

    files = args.slices
    median = {name: statistics.median(values) for name, values in times.items()}
    files_x4 = CONCURRENT * max(1, args.slices // CONCURRENT)
    rate = {
        name: (files_x4 if name.endswith("_x4") else files) / seconds
        for name, seconds in median.items()
    }
    ratio = rate["seriesflow"] / rate["storescp"]
    ratio_x4 = rate["seriesflow_x4"] / rate["storescp_x4"]
    latency = statistics.median(latencies)
    report: dict[str, Any] = {
        "input": {"files": files, "size": args.size, "runs": args.runs, "concurrent": CONCURRENT},
        "receive": {
            "seconds": times,
            "median_seconds": median,
            "instances_per_second": rate,
            "ratio": ratio,
            "ratio_x4": ratio_x4,
            "target": THROUGHPUT_TARGET,
        },
        "latency_seconds": latencies,
        "latency_median_seconds": latency,
        "latency_target_seconds": LATENCY_TARGET_SECONDS,
        "latency_stage_median_seconds": stages,
        "machine": {"cpus": os.cpu_count(), "load_average": load},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print()
    for name in times:
        print(
            f"receive  {name:<14} {rate[name]:8.1f} instances/s   (median {median[name]:.2f} s; "
            f"runs: {', '.join(f'{v:.2f}' for v in times[name])})"
        )
    for label, value in (("", ratio), (f", {CONCURRENT} storescu at once", ratio_x4)):
        print(
            f"{'PASS' if value >= THROUGHPUT_TARGET else 'MISS'}  receive throughput ratio"
            f"{label} {value:.2f} (target >= {THROUGHPUT_TARGET})"
        )
    print(
        f"{'PASS' if latency <= LATENCY_TARGET_SECONDS else 'MISS'}  release -> "
        f"selected-images.json median {latency:.2f} s (target <= {LATENCY_TARGET_SECONDS} s; "
        f"runs: {', '.join(f'{v:.2f}' for v in latencies)})"
    )
    print(
        "  where it goes (medians, from the services' logs): "
        + ", ".join(f"{name} {value:.2f} s" for name, value in stages.items())
    )
    print(f"results written to {RESULTS}")
    return 0


def stage_medians(logs: Path, released_at: dict[str, float]) -> dict[str, float]:
    """Medians of release -> job released (receiver) -> job parsed (parser) -> job selected
    (selector), for the counted jobs, from the services' INFO log lines."""
    job_released = log_times(logs / "receiver.log", "job released")
    parsed = log_times(logs / "parser.log", "job parsed")
    selected = log_times(logs / "selector.log", "job selected")
    steps: dict[str, list[float]] = {"receiver": [], "parser": [], "selector": []}
    for job, released in released_at.items():
        if job in job_released and job in parsed and job in selected:
            steps["receiver"].append(job_released[job] - released)
            steps["parser"].append(parsed[job] - job_released[job])
            steps["selector"].append(selected[job] - parsed[job])
    return {name: statistics.median(values) for name, values in steps.items() if values}


if __name__ == "__main__":
    sys.exit(main())
