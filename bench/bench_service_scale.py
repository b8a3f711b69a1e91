"""Service-mode scale run: one study of N instances through receiver, parser and selector.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_service_scale.py [--counts 300 1500 5000] [--size 64]

For each count, one synthetic CT study of that many slices (``--size`` x ``--size``
pixels: the number of instances is what is scaled, not their size) is sent by one
``storescu`` to a freshly started receiver, parser and selector (separate processes, log
level INFO). Measured: the receive time (storescu's whole run), the selector's time
(``job parsed`` to ``job selected`` in the logs), the whole release -> ``job.selected``
time, and the peak resident memory (``VmHWM`` from ``/proc``) of the receiver and of the
selector. The parser's own scaling is ``bench_parser_scale.py``'s. Linear time and flat
memory are what to look for. Results go to ``bench/results/service-scale.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_service import (  # noqa: E402
    bench_settings,
    log_times,
    storescu,
    wait_for_selected,
    write_config,
)

from shared.broker import Broker  # noqa: E402
from shared.samples import write_ct_series  # noqa: E402
from shared.settings import ServiceSettings  # noqa: E402
from tests.integration.infra import (  # noqa: E402
    free_port,
    rabbitmq_vhost,
    start_seaweedfs,
    wait_for_port,
)
from tests.integration.processes import ServiceProcess, service_environment  # noqa: E402

RESULTS = REPO / "bench" / "results" / "service-scale.json"


def peak_mib(process: ServiceProcess) -> float | None:
    """The process's peak resident memory (VmHWM), MiB; None once it has ended."""
    if process.process is None:
        return None
    try:
        status = Path(f"/proc/{process.process.pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def one_count(count: int, size: int, work: Path, settings: ServiceSettings) -> dict[str, Any]:
    folder = work / f"ct-{count}"
    write_ct_series(folder, slices=count, size=size, seed=count)
    port = free_port()
    config, pipelines = work / f"config-{count}.yaml", work / f"pipelines-{count}"
    write_config(config, port, pipelines)
    env = service_environment(settings, config, pipelines)
    logs = work / f"logs-{count}"
    logs.mkdir()
    broker = Broker(settings, "bench")
    broker.connect(attempts=3)
    broker.declare_service_queue("bench-observer", ["job.selected.#"])
    services = {
        name: ServiceProcess(name, env, logs).start() for name in ("receiver", "parser", "selector")
    }
    try:
        wait_for_port(port, 60)
        time.sleep(2)  # parser and selector consuming
        receive = storescu(port, "SERIESFLOW", folder)
        released = time.perf_counter()
        arrived, job = wait_for_selected(broker, timeout=1800)
        peaks = {name: peak_mib(process) for name, process in services.items()}
    finally:
        for process in services.values():
            process.stop()
        broker.close()
    parsed = log_times(logs / "parser.log", "job parsed").get(job)
    selected = log_times(logs / "selector.log", "job selected").get(job)
    return {
        "instances": count,
        "receive_seconds": receive,
        "instances_per_second": count / receive,
        "release_to_selected_seconds": arrived - released,
        "selector_seconds": None if parsed is None or selected is None else selected - parsed,
        "peak_mib": peaks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[300, 1500, 5000])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-scale-"))
    s3 = start_seaweedfs(work / "s3")
    rows = []
    try:
        with rabbitmq_vhost() as amqp:
            settings = bench_settings(
                amqp, s3.endpoint, s3.access_key, s3.secret_key, "bench-scale"
            )
            for count in args.counts:
                row = one_count(count, args.size, work, settings)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"size": args.size, "rows": rows}, indent=1))
    print(
        f"{'instances':>9} {'receive s':>9} {'inst/s':>7} {'selector s':>10} "
        f"{'release->selected s':>19} {'receiver MiB':>12} {'selector MiB':>12}"
    )
    for row in rows:
        selector = row["selector_seconds"]
        print(
            f"{row['instances']:>9} {row['receive_seconds']:>9.2f} "
            f"{row['instances_per_second']:>7.1f} "
            f"{'?' if selector is None else f'{selector:.2f}':>10} "
            f"{row['release_to_selected_seconds']:>19.2f} "
            f"{row['peak_mib']['receiver'] or 0:>12.0f} {row['peak_mib']['selector'] or 0:>12.0f}"
        )
    print(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
