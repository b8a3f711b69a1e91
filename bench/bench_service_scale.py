"""Service mode at scale: one study of N instances through receiver, parser and selector;
and two parsers on two jobs at once against one parser on one.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_service_scale.py [--counts 300 1500 5000] [--size 64]
    .venv/bin/python bench/bench_service_scale.py --parts pair [--pair-runs 5]

1. **Scale** (part ``scale``): for each count, one synthetic CT study of that many slices
   (``--size`` x ``--size`` pixels: the number of instances is what is scaled, not their
   size) is sent by one ``storescu`` to a freshly started receiver, parser and selector
   (separate processes, default settings, log level INFO). Measured: the receive time
   (storescu's whole run); from the services' own log lines (as ``bench_service.py``'s
   split), release -> ``job parsed`` (the receiver's release work and the parser's whole
   job: download, parse, convert, upload) and ``job parsed`` -> ``job selected`` (the
   selector); release -> ``job.selected`` received on a queue of the benchmark's own (the
   whole); and the peak resident memory (``VmHWM`` from ``/proc``) of each of the three
   processes. Printed with seconds per 1,000 instances and peak RSS per count: linear time
   is the same seconds per 1,000 at every count, flat memory the same peak. ``--runs``
   repeats each count with fresh processes (medians of the times, the highest peak).
2. **Two parsers** (part ``pair``): a receiver and two parser processes consuming from the
   same queue. Both parsers are paused (SIGSTOP) while the receiver takes the studies,
   then resumed together, so the jobs wait on the queue and the time counted is the
   parsers' alone: resume -> every ``job.parsed``. One job (one parser works, the other
   idles) against two jobs published together (one each), ``--pair-slices`` x
   ``--pair-size``² each, interleaved, medians of ``--pair-runs`` after a warm-up. On two
   CPUs the ratio should be about 1. The parsers' logs show that each of two jobs went to
   its own parser.

Results go to ``bench/results/service-scale.json`` (``--results``); recorded figures in
``bench/results-service-mode.md``. ``bench_parser_scale.py`` measures the parser's own
work in one process, without the services and the object store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    MIB,
    RESULTS_DIR,
    at_most,
    listing,
    load_line,
    machine,
    median,
    per_thousand,
    process_mib,
    table,
    verdict,
    warn_if_busy,
    write_results,
)
from bench_service import (
    Deployment,
    Observer,
    bench_settings,
    log_times,
    stop_all,
    storescu,
    storescu_at_once,
)
from pika.exceptions import ChannelClosedByBroker

from shared.broker import Broker, queue_name
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from tests.integration.infra import rabbitmq_vhost, start_seaweedfs
from tests.integration.processes import ServiceProcess

RESULTS = RESULTS_DIR / "service-scale.json"
PARTS = ("scale", "pair")
SCALE_SERVICES = ("receiver", "parser", "selector")
PAIR_TARGET = 1.25  # two parsers on two jobs / one parser on one, on two CPUs: about 1
LINEAR_TARGET = 1.25  # s per 1,000 at the largest count / at the smallest
FLAT_SLACK_MIB = 50.0  # peak RSS growth from the smallest count to the largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--counts", type=int, nargs="+", default=[300, 1500, 5000])
    parser.add_argument("--size", type=int, default=64, help="rows and columns (scale)")
    parser.add_argument("--runs", type=int, default=1, help="scale: runs per count")
    parser.add_argument("--pair-runs", type=int, default=5, help="pair: counted runs")
    parser.add_argument("--pair-slices", type=int, default=300)
    parser.add_argument("--pair-size", type=int, default=256)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.pair_runs < 1:
        parser.error("--runs and --pair-runs must be at least 1")
    load = warn_if_busy()
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-scale-"))
    s3 = start_seaweedfs(work / "s3")
    report: dict[str, Any] = {"benchmark": "service-scale"}
    try:
        with rabbitmq_vhost() as amqp:
            settings = bench_settings(
                amqp, s3.endpoint, s3.access_key, s3.secret_key, "bench-scale"
            )
            if "scale" in args.parts:
                report["scale"] = scale_part(args, work, settings)
            if "pair" in args.parts:
                report["pair"] = pair_part(args, work, settings)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["machine"] = machine(load)
    print_report(report)
    write_results(args.results, report)
    return 0


# --- scale -----------------------------------------------------------------------------


def scale_part(args: argparse.Namespace, work: Path, settings: ServiceSettings) -> dict[str, Any]:
    rows = []
    for count in args.counts:
        folder = work / f"ct-{count}"
        write_ct_series(folder, slices=count, size=args.size, seed=count)
        runs = []
        for run in range(args.runs):
            runs.append(one_count(folder, count, work / f"scale-{count}-{run}", settings))
            print(f"scale {count}: run {run + 1}/{args.runs} {runs[-1]}", file=sys.stderr)
        shutil.rmtree(folder)
        rows.append(summarise_count(count, args.size, runs))
    return {"size": args.size, "runs": args.runs, "rows": rows, "judged": judge_scale(rows)}


def one_count(
    folder: Path, count: int, deployment_dir: Path, settings: ServiceSettings
) -> dict[str, Any]:
    """One study of ``count`` instances through fresh services."""
    deployment = Deployment(settings, deployment_dir)
    observer = Observer(settings, ["job.received", "job.parsed", "job.selected"])
    services = dict(zip(SCALE_SERVICES, deployment.start_pipeline(SCALE_SERVICES), strict=True))
    try:
        wait_consumers(settings, {"parser": 1, "selector": 1})
        observer.drain()
        receive = storescu(deployment.port, "SERIESFLOW", folder)
        released, wall = time.perf_counter(), time.time()
        _, job = observer.wait("job.received", timeout=600)
        observer.wait("job.parsed", job, timeout=1800)
        selected, _ = observer.wait("job.selected", job, timeout=600)
        peaks = {name: pid_peak(process) for name, process in services.items()}
    finally:
        stop_all(services.values())
        observer.close()
    # the split from the services' own log lines, as bench_service.py's latency part
    logs = deployment.logs
    job_released = log_times(logs / "receiver.log", "job released")[job]
    parsed = log_times(logs / "parser.log", "job parsed")[job]
    return {
        "receive_seconds": receive,
        "release_to_received_seconds": job_released - wall,
        "release_to_parsed_seconds": parsed - wall,
        "parsed_to_selected_seconds": log_times(logs / "selector.log", "job selected")[job]
        - parsed,
        "release_to_selected_seconds": selected - released,
        "peak_mib": peaks,
    }


def pid_peak(process: ServiceProcess) -> float | None:
    return None if process.process is None else process_mib(process.process.pid, "VmHWM")


def wait_consumers(
    settings: ServiceSettings, services: dict[str, int], timeout: float = 60.0
) -> None:
    """Until each service's queue exists with (at least) that many consumers. Each look is
    a connection of its own: asking for a queue not declared yet closes the channel."""
    deadline = time.monotonic() + timeout
    for service, wanted in services.items():
        while consumers(settings, queue_name(service)) < wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service}: fewer than {wanted} consumers after {timeout} s")
            time.sleep(0.2)


def consumers(settings: ServiceSettings, queue: str) -> int:
    """How many consumers ``queue`` has; 0 when it is not declared yet."""
    broker = Broker(settings, "bench")
    broker.connect(attempts=3)
    try:
        return int(broker.channel.queue_declare(queue, passive=True).method.consumer_count)
    except ChannelClosedByBroker:
        return 0
    finally:
        broker.close()


def summarise_count(count: int, size: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the times over the runs, the highest peak of each process."""
    seconds = {
        key: median(r[key] for r in runs)
        for key in (
            "receive_seconds",
            "release_to_received_seconds",
            "release_to_parsed_seconds",
            "parsed_to_selected_seconds",
            "release_to_selected_seconds",
        )
    }
    peaks = {
        name: max((r["peak_mib"][name] or 0.0) for r in runs) or None for name in SCALE_SERVICES
    }
    return {
        "instances": count,
        "volume_mib": round(count * size * size * 2 / MIB, 1),
        **seconds,
        "receive_per_1000": per_thousand(seconds["receive_seconds"], count),
        "parse_per_1000": per_thousand(seconds["release_to_parsed_seconds"], count),
        "select_per_1000": per_thousand(seconds["parsed_to_selected_seconds"], count),
        "peak_mib": peaks,
        "runs": runs,
    }


def judge_scale(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Linear time: seconds per 1,000 at the largest count at most LINEAR_TARGET x at the
    smallest. Flat memory: each process's peak grows at most FLAT_SLACK_MIB from the
    smallest count to the largest, plus, for the parser, 3 x the growth of the volume it
    holds (issue 10's memory rule for conversion)."""
    if len(rows) < 2:
        return {}
    small, large = rows[0], rows[-1]
    judged: dict[str, Any] = {}
    for stage in ("receive", "parse", "select"):
        value = large[f"{stage}_per_1000"] / small[f"{stage}_per_1000"]
        judged[f"{stage}_time"] = {
            "ratio": value,
            "target": LINEAR_TARGET,
            "pass": at_most(value, LINEAR_TARGET),
        }
    for name in SCALE_SERVICES:
        low, high = small["peak_mib"][name], large["peak_mib"][name]
        allowed = FLAT_SLACK_MIB
        if name == "parser":
            allowed += 3 * (large["volume_mib"] - small["volume_mib"])
        growth = None if low is None or high is None else high - low
        judged[f"{name}_memory"] = {
            "growth_mib": growth,
            "allowed_mib": allowed,
            "pass": at_most(growth, allowed),
        }
    return judged


# --- two parsers -----------------------------------------------------------------------


def pair_part(args: argparse.Namespace, work: Path, settings: ServiceSettings) -> dict[str, Any]:
    studies = [work / f"pair-{n}" for n in range(3)]
    for seed, folder in enumerate(studies, start=101):
        write_ct_series(folder, slices=args.pair_slices, size=args.pair_size, seed=seed)
    deployment = Deployment(settings, work / "pair")
    observer = Observer(settings, ["job.received", "job.parsed"])
    receiver = deployment.start_pipeline(["receiver"])
    parsers = [deployment.start("parser", deployment.logs / f"parser-{n}") for n in (1, 2)]
    one: list[float] = []
    two: list[float] = []
    pairs: list[list[str]] = []  # the jobs of each counted two-job run
    try:
        wait_consumers(settings, {"parser": 2})
        observer.drain()
        for run in range(args.pair_runs + 1):  # the first is a warm-up
            cases = [("one", studies[:1]), ("two", studies[1:])]
            for name, folders in cases if run % 2 == 0 else cases[::-1]:
                seconds, jobs = parse_at_once(deployment.port, observer, parsers, folders)
                if run:
                    (one if name == "one" else two).append(seconds)
                    if name == "two":
                        pairs.append(jobs)
                print(f"pair run {run}/{args.pair_runs}: {name} {seconds:.2f} s", file=sys.stderr)
    finally:
        stop_all([*receiver, *parsers])
        observer.close()
    single, pair = median(one), median(two)
    # which parser took which job, from their logs: two jobs at once must be one each
    took = [set(log_times(p.log_path, "job parsed")) for p in parsers]
    shared = sum(any(set(jobs) <= jobs_of for jobs_of in took) for jobs in pairs)
    return {
        "two_job_runs_on_one_parser": shared,
        "slices": args.pair_slices,
        "size": args.pair_size,
        "runs": args.pair_runs,
        "one_parser_one_job_seconds": one,
        "two_parsers_two_jobs_seconds": two,
        "one_median_seconds": single,
        "two_median_seconds": pair,
        "ratio": pair / single,
        "target": PAIR_TARGET,
        "pass": at_most(pair / single, PAIR_TARGET),
    }


def parse_at_once(
    port: int, observer: Observer, parsers: list[ServiceProcess], folders: list[Path]
) -> tuple[float, list[str]]:
    """Parsers paused, one study per folder received (each its job, waiting on the queue),
    parsers resumed: seconds from the resume to the last ``job.parsed``, and the jobs."""
    pids = [p.process.pid for p in parsers if p.process is not None]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        storescu_at_once(port, "SERIESFLOW", folders)
        jobs = [observer.wait("job.received", timeout=600)[1] for _ in folders]
    finally:
        resumed = time.perf_counter()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    last = max(observer.wait("job.parsed", job, timeout=600)[0] for job in jobs)
    return last - resumed, jobs


# --- report ----------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    if "scale" in report:
        scale = report["scale"]
        print()
        print("\n".join(scale_table(scale)))
    if "pair" in report:
        pair = report["pair"]
        print(
            f"\ntwo parsers: jobs of {pair['slices']} x {pair['size']}², resume -> last "
            f"job.parsed; one parser, one job: {pair['one_median_seconds']:.2f} s "
            f"(runs {listing(pair['one_parser_one_job_seconds'])}); two parsers, two jobs at "
            f"once: {pair['two_median_seconds']:.2f} s "
            f"(runs {listing(pair['two_parsers_two_jobs_seconds'])})"
        )
        print(
            f"{verdict(pair['pass'])}  ratio {pair['ratio']:.2f} (about 1 on two CPUs: "
            f"<= {pair['target']})"
        )
        if pair["two_job_runs_on_one_parser"]:
            print(
                f"warning: in {pair['two_job_runs_on_one_parser']} of the two-job runs one "
                "parser took both jobs"
            )
    print(load_line(report["machine"]))


def scale_table(scale: dict[str, Any]) -> list[str]:
    """The scale run as a table (peak RSS in MiB), and the linear / flat verdicts."""
    lines = [
        f"One study of N instances of {scale['size']}x{scale['size']}, fresh receiver, parser "
        f"and selector per run; medians of {scale['runs']} run(s), peak RSS (VmHWM) in MiB:",
        "",
        *table(
            [
                "instances",
                "receive s",
                "s/1,000",
                "release->parsed s",
                "s/1,000",
                "parsed->selected s",
                "receiver",
                "parser",
                "selector",
                "volume",
            ],
            [scale_cells(row) for row in scale["rows"]],
        ),
        "",
    ]
    for key, value in scale["judged"].items():
        if "ratio" in value:
            lines.append(
                f"- {verdict(value['pass'])}  {key}: s/1,000 at the largest count / at the "
                f"smallest {value['ratio']:.2f} (linear: <= {value['target']})"
            )
        else:
            growth = "?" if value["growth_mib"] is None else f"{value['growth_mib']:+.0f}"
            lines.append(
                f"- {verdict(value['pass'])}  {key}: peak {growth} MiB from the smallest count "
                f"to the largest (flat: <= {value['allowed_mib']:.0f})"
            )
    return lines


def scale_cells(row: dict[str, Any]) -> list[str]:
    def mib(value: float | None) -> str:
        return "?" if value is None else f"{value:.0f}"

    return [
        f"{row['instances']:,}",
        f"{row['receive_seconds']:.2f}",
        f"{row['receive_per_1000']:.2f}",
        f"{row['release_to_parsed_seconds']:.2f}",
        f"{row['parse_per_1000']:.2f}",
        f"{row['parsed_to_selected_seconds']:.2f}",
        *(mib(row["peak_mib"][name]) for name in SCALE_SERVICES),
        f"{row['volume_mib']:.0f}",
    ]


if __name__ == "__main__":
    sys.exit(main())
