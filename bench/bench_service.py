"""Service-mode benchmarks, each against a peer in the same run on the same data.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_service.py [--runs 5] [--slices 300] [--size 512]
    .venv/bin/python bench/bench_service.py --parts latency      # one part only

1. **Receive throughput** (part ``receive``), instances per second: seriesflow's receiver,
   which answers success only after an instance is stored durably, against dcmtk
   ``storescp`` writing to disk with ``TCP_NODELAY=1``. The same ``storescu`` (also
   ``TCP_NODELAY=1``) sends the same generated CT series to each, alternating. Target: at
   least 0.5x. Then **4 ``storescu`` at once** to each side (4 different studies of a
   quarter of the slices each, so the same number of instances; ``storescp --fork`` serves
   them in parallel, as the receiver does). Then, for information (no target), the
   **receiver's own path**: the same single storescu to seriesflow with the object store
   (SeaweedFS, on the same two cores) paused with SIGSTOP 0.25 s into the send and resumed
   after it, so that the spool's uploads wait and their CPU, and the store's, is not spent
   during the receive.
2. **End-to-end latency** (part ``latency``): from the end of the association
   (``storescu`` returning after its release) to ``selected-images.json`` being in the
   store (the ``job.selected`` event is published right after it is written), with
   receiver, parser and selector running as separate processes at the default INFO log
   level. Target: median at most 1.5 s. Where the time goes is read from the services' own
   log lines (job released, job parsed, job selected) and printed as medians.

The services run with their default settings (``tests/integration/processes.py``), so the
benchmark measures whatever the receiver, parser and selector do by default. Medians over
``--runs`` runs, after one uncounted warm-up. Results go to ``bench/results/service.json``
(``--results``). A missed target is a measurement: the exit status is 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from _common import (
    REPO,
    RESULTS_DIR,
    at_least,
    at_most,
    listing,
    machine,
    median,
    process_cpu_seconds,
    tail,
    verdict,
    warn_if_busy,
    write_results,
)
from pydantic import SecretStr

sys.path.insert(0, str(REPO))

from shared.broker import Broker, queue_name
from shared.events import Envelope
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from tests.integration.infra import (
    dcmtk,
    dcmtk_available,
    free_port,
    rabbitmq_vhost,
    start_seaweedfs,
    wait_for_port,
)
from tests.integration.processes import ServiceProcess, service_environment

RESULTS = RESULTS_DIR / "service.json"
THROUGHPUT_TARGET = 0.5
LATENCY_TARGET_SECONDS = 1.5
CONCURRENT = 4
PARTS = ("receive", "latency")
PAUSE_AFTER_SECONDS = 0.25
PIPELINE_SERVICES = ("receiver", "parser", "selector")


def storescu_command(port: int, called: str, folder: Path) -> list[str]:
    return [
        *(dcmtk("storescu"), "--aetitle", "MODALITY", "--call", called),
        *("--scan-directories", "--required", "127.0.0.1", str(port), str(folder)),
    ]


def storescu(port: int, called: str, folder: Path) -> float:
    """Send every file below ``folder``; seconds from start to the association's release."""
    return storescu_at_once(port, called, [folder])


def storescu_at_once(
    port: int,
    called: str,
    folders: list[Path],
    paused: subprocess.Popen[bytes] | None = None,
) -> float:
    """One ``storescu`` per folder, all started together; seconds until the last returns.
    With ``paused`` (the object store's process), that process is stopped (SIGSTOP) from
    PAUSE_AFTER_SECONDS after the start until every storescu has returned: the receiver's
    uploads wait meanwhile."""
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
    try:
        if paused is not None:
            time.sleep(PAUSE_AFTER_SECONDS)
            paused.send_signal(signal.SIGSTOP)
        for process in processes:
            _, err = process.communicate(timeout=600)
            if process.returncode != 0:
                output = err.decode(errors="replace").strip()[-1000:] or "no output"
                failed.append(f"exit status {process.returncode}: {output}")
        elapsed = time.perf_counter() - start
    finally:
        if paused is not None:
            paused.send_signal(signal.SIGCONT)
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


def log_records(path: Path, message: str) -> Iterator[dict[str, Any]]:
    """The JSON log lines of ``path`` with this message, in order."""
    for line in path.read_text(errors="replace").splitlines():
        if f'"{message}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def log_times(path: Path, message: str) -> dict[str, float]:
    """job_id -> epoch seconds of the first log line with this message."""
    found: dict[str, float] = {}
    for record in log_records(path, message):
        try:
            at = datetime.datetime.fromisoformat(record["time"]).timestamp()
            found.setdefault(record["job_id"], at)
        except (ValueError, KeyError, TypeError):
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


class Deployment:
    """A configuration (one receiver port, pipeline ``bench``, NIfTI) and the services'
    environment, in ``folder``."""

    def __init__(self, settings: ServiceSettings, folder: Path, log_level: str = "INFO") -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config, pipelines = folder / "config.yaml", folder / "pipelines"
        write_config(config, self.port, pipelines)
        self.env = service_environment(settings, config, pipelines)
        self.env["SERIESFLOW_LOG_LEVEL"] = log_level
        # The receiver's local spool (where it has one) in this deployment's folder, on the
        # same disk as storescp's output: the default is shared by every receiver of this
        # user, and a receiver uploads what it finds there at start. Ignored by a receiver
        # without the setting.
        self.env["SERIESFLOW_SPOOL_DIR"] = str(folder / "spool")
        self.logs = folder / "logs"
        self.logs.mkdir(exist_ok=True)

    def start(self, service: str, log_dir: Path | None = None) -> ServiceProcess:
        """One service process, its log in ``log_dir`` (default the deployment's logs)."""
        folder = log_dir or self.logs
        folder.mkdir(parents=True, exist_ok=True)
        return ServiceProcess(service, self.env, folder).start()

    def start_pipeline(self, services: Iterable[str] = PIPELINE_SERVICES) -> list[ServiceProcess]:
        """The services, started; returns once the receiver (if any) listens."""
        started = [self.start(name) for name in services]
        if "receiver" in services:
            try:
                wait_for_port(self.port, 60)
            except TimeoutError:
                stop_all(started)
                log = tail(self.logs / "receiver.log", 30)
                raise RuntimeError(f"the receiver did not listen; its log ends:\n{log}") from None
        return started


class Observer:
    """A queue of the benchmark's own, bound to job events; when each event arrived."""

    def __init__(self, settings: ServiceSettings, events: Iterable[str]) -> None:
        self.broker = Broker(settings, "bench")
        self.broker.connect(attempts=3)
        name = "bench-observer"
        self.broker.declare_service_queue(name, [f"{e}.#" for e in (*events, "job.failed")])
        self.queue = queue_name(name)
        self.pending: list[tuple[str, str, float]] = []  # (type, job, perf_counter)

    def drain(self) -> None:
        """Forgets every event that arrived so far."""
        self._poll(block=False)
        self.pending.clear()

    def wait(self, event: str, job: str | None = None, timeout: float = 120.0) -> tuple[float, str]:
        """The first event of this type (of ``job``, or any) not yet taken: when it arrived
        (``time.perf_counter``) and its job. A ``job.failed`` of the job raises."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (kind, job_id, at) in enumerate(self.pending):
                if job is not None and job_id != job:
                    continue
                if kind == "job.failed":
                    raise RuntimeError(f"job {job_id} failed")
                if kind == event:
                    del self.pending[index]
                    return at, job_id
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self._poll(block=True)

    def _poll(self, block: bool) -> None:
        while True:
            method, _, body = self.broker.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                if block:
                    time.sleep(0.005)
                return
            envelope = Envelope.from_bytes(body)
            self.pending.append((envelope.type, envelope.job_id, time.perf_counter()))
            block = False

    def close(self) -> None:
        self.broker.close()


def stop_all(processes: Iterable[ServiceProcess]) -> None:
    """SIGTERM to every process at once, then each waited for (killed after 15 s)."""
    processes = list(processes)
    for process in processes:
        if process.alive() and process.process is not None:
            process.process.terminate()
    for process in processes:
        process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not (dcmtk_available("storescu") and dcmtk_available("storescp")):
        print("dcmtk (storescu, storescp) is not installed: bash scripts/setup.sh", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-service-"))
    s3 = start_seaweedfs(work / "s3")
    try:
        with rabbitmq_vhost() as amqp:
            settings = bench_settings(amqp, s3.endpoint, s3.access_key, s3.secret_key, "bench")
            return run(args, work, settings, s3.process)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace,
    work: Path,
    settings: ServiceSettings,
    store: subprocess.Popen[bytes] | None = None,
) -> int:
    load = warn_if_busy()
    ct = work / "ct"
    write_ct_series(ct, slices=args.slices, size=args.size, seed=5)
    report: dict[str, Any] = {
        "benchmark": "service",
        "input": {"files": args.slices, "size": args.size, "runs": args.runs},
    }
    if "receive" in args.parts:
        report["receive"] = receive_part(args, work, settings, ct, store)
    if "latency" in args.parts:
        report["latency"] = latency_part(args, work, settings, ct, store)
    report["machine"] = machine(load)
    print()
    print_report(report)
    write_results(args.results, report)
    return 0


def receive_part(
    args: argparse.Namespace,
    work: Path,
    settings: ServiceSettings,
    ct: Path,
    store: subprocess.Popen[bytes] | None = None,
) -> dict[str, Any]:
    """Receive throughput: the receiver alone (log level WARNING: no per-instance lines),
    against storescp writing to disk; one storescu, then 4 at once to each side."""
    quarters = []
    for n in range(CONCURRENT):
        folder = work / f"ct-{n}"
        write_ct_series(
            folder, slices=max(1, args.slices // CONCURRENT), size=args.size, seed=11 + n
        )
        quarters.append(folder)
    deployment = Deployment(settings, work / "receive", log_level="WARNING")
    port = deployment.port
    services = deployment.start_pipeline(["receiver"])
    storescp = ForkingStoreSCP(work / "storescp-out")
    times: dict[str, list[float]] = {
        "seriesflow": [],
        "storescp": [],
        "seriesflow_x4": [],
        "storescp_x4": [],
    }
    if store is not None:
        times["seriesflow_store_paused"] = []
    try:
        for run_index in range(args.runs + 1):
            storescp.clear()
            pair: list[tuple[str, Callable[[], float]]] = [
                ("seriesflow", lambda: storescu(port, "SERIESFLOW", ct)),
                ("storescp", lambda: storescu(storescp.port, "STORESCP", ct)),
                ("seriesflow_x4", lambda: storescu_at_once(port, "SERIESFLOW", quarters)),
                ("storescp_x4", lambda: storescu_at_once(storescp.port, "STORESCP", quarters)),
            ]
            if store is not None:
                pair.append(
                    (
                        "seriesflow_store_paused",
                        lambda: storescu_at_once(port, "SERIESFLOW", [ct], paused=store),
                    )
                )
            if run_index % 2:
                pair.reverse()
            for name, send in pair:
                seconds = send()
                if run_index:  # the first round is the warm-up
                    times[name].append(seconds)
            print(f"receive run {run_index}/{args.runs} done", file=sys.stderr)
    finally:
        storescp.stop()
        stop_all(services)
    files = args.slices
    files_x4 = CONCURRENT * max(1, args.slices // CONCURRENT)
    medians = {name: median(values) for name, values in times.items()}
    rate = {
        name: (files_x4 if name.endswith("_x4") else files) / seconds
        for name, seconds in medians.items()
    }
    return {
        "concurrent": CONCURRENT,
        "seconds": times,
        "median_seconds": medians,
        "instances_per_second": rate,
        "ratio": rate["seriesflow"] / rate["storescp"],
        "ratio_x4": rate["seriesflow_x4"] / rate["storescp_x4"],
        "ratio_store_paused": (
            rate["seriesflow_store_paused"] / rate["storescp"]
            if "seriesflow_store_paused" in rate
            else None
        ),
        "target": THROUGHPUT_TARGET,
    }


def cpu_snapshot(processes: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process that is still running."""
    used = {name: process_cpu_seconds(pid) for name, pid in processes.items()}
    return {name: seconds for name, seconds in used.items() if seconds is not None}


def latency_part(
    args: argparse.Namespace,
    work: Path,
    settings: ServiceSettings,
    ct: Path,
    store: subprocess.Popen[bytes] | None = None,
) -> dict[str, Any]:
    """Receiver + parser + selector at INFO, release -> selected-images.json; with the CPU
    time each service (and the object store) used per job after the release, and what
    that implies: on this machine's CPUs, the latency cannot be below their sum divided
    by the number of CPUs (the "CPU floor")."""
    deployment = Deployment(settings, work / "latency")
    observer = Observer(settings, ["job.selected"])
    services = deployment.start_pipeline()
    watched = {s.service: s.process.pid for s in services if s.process is not None}
    if store is not None:
        watched["object store"] = store.pid
    latencies: list[float] = []
    released_at: dict[str, float] = {}
    cpu: dict[str, list[float]] = {name: [] for name in watched}
    floors: list[float] = []
    try:
        for run_index in range(args.runs + 1):
            storescu(deployment.port, "SERIESFLOW", ct)
            released, wall = time.perf_counter(), time.time()
            before = cpu_snapshot(watched)
            arrived, job = observer.wait("job.selected")
            after = cpu_snapshot(watched)
            if run_index:
                latencies.append(arrived - released)
                released_at[job] = wall
                used = {n: after[n] - before[n] for n in cpu if n in before and n in after}
                for name, seconds in used.items():
                    cpu[name].append(seconds)
                floors.append(sum(used.values()) / (os.cpu_count() or 1))
            print(
                f"latency run {run_index}/{args.runs}: {arrived - released:.2f} s", file=sys.stderr
            )
    finally:
        stop_all(services)
        observer.close()
    return {
        "seconds": latencies,
        "median_seconds": median(latencies),
        "target_seconds": LATENCY_TARGET_SECONDS,
        "stage_median_seconds": stage_medians(deployment.logs, released_at),
        "parser_step_median_seconds": parser_steps(deployment.logs, released_at),
        "cpu_after_release_median_seconds": {name: median(v) for name, v in cpu.items() if v},
        "cpu_floor_median_seconds": median(floors) if floors else None,
    }


def print_report(report: dict[str, Any]) -> None:
    if "receive" in report:
        receive = report["receive"]
        for name, values in receive["seconds"].items():
            print(
                f"receive  {name:<14} {receive['instances_per_second'][name]:8.1f} instances/s"
                f"   (median {receive['median_seconds'][name]:.2f} s; "
                f"runs: {listing(values)})"
            )
        for label, value in (
            ("", receive["ratio"]),
            (f", {CONCURRENT} at once", receive["ratio_x4"]),
        ):
            print(
                f"{verdict(at_least(value, THROUGHPUT_TARGET))}  receive throughput ratio"
                f"{label} {value:.2f} (target >= {THROUGHPUT_TARGET})"
            )
        if receive.get("ratio_store_paused") is not None:
            print(
                "info  the receiver's own path (object store paused during the send): "
                f"{receive['ratio_store_paused']:.2f} of storescp"
            )
    if "latency" in report:
        latency = report["latency"]
        print(
            f"{verdict(at_most(latency['median_seconds'], LATENCY_TARGET_SECONDS))}  release -> "
            f"selected-images.json median {latency['median_seconds']:.2f} s (target <= "
            f"{LATENCY_TARGET_SECONDS} s; runs: {listing(latency['seconds'])})"
        )
        print(
            "  where it goes (medians, from the services' logs): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in latency["stage_median_seconds"].items())
        )
        if latency.get("parser_step_median_seconds"):
            print(
                "  the parser's steps (medians): "
                + ", ".join(
                    f"{k} {v:.2f} s" for k, v in latency["parser_step_median_seconds"].items()
                )
            )
        if latency.get("cpu_after_release_median_seconds"):
            print(
                "  CPU time a job, release to selected (medians): "
                + ", ".join(
                    f"{k} {v:.2f} s" for k, v in latency["cpu_after_release_median_seconds"].items()
                )
                + f"; CPU floor (their sum / {os.cpu_count()} CPUs) "
                f"{latency['cpu_floor_median_seconds']:.2f} s"
            )


def parser_steps(logs: Path, released_at: dict[str, float]) -> dict[str, float]:
    """Medians of the parser's own steps (download, parse, upload: its ``job parsed`` line)
    for the counted jobs."""
    steps: dict[str, list[float]] = {"download": [], "parse": [], "upload": []}
    for record in log_records(logs / "parser.log", "job parsed"):
        if record.get("job_id") not in released_at:
            continue
        for step, values in steps.items():
            value = record.get(f"{step}_seconds")
            if isinstance(value, int | float):
                values.append(float(value))
    return {name: median(values) for name, values in steps.items() if values}


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
    return {name: median(values) for name, values in steps.items() if values}


if __name__ == "__main__":
    sys.exit(main())
