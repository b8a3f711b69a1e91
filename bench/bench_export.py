"""Export benchmark: the exporter service against dcmtk ``storescu`` sending the same files.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672; starts SeaweedFS):

    .venv/bin/python bench/bench_export.py [--runs 5] [--slices 300] [--size 512]

Both send one generated CT series (``shared.samples.write_ct_series``) to the same
destination, one dcmtk ``storescp`` writing to disk with ``TCP_NODELAY=1``:

The destination is started with ``--fork`` (one process per association, as a PACS serves
several at once), so the exporter's parallel associations are served in parallel.

* **storescu** (``TCP_NODELAY=1``, ``--required``: only the contexts the files need) reads
  the files from a local folder;
* **seriesflow**: the exporter runs as its own process (``seriesflow exporter``), started
  once; the files are already in the object store, as the receiver leaves them. Timed from
  publishing ``export.requested`` to receiving ``export.completed``, so the broker, the
  state kept in the store, the downloads and the association are all inside the time.
  Every run is a new export, so every file is sent.
* **transport**: the exporter's association code alone, one association, sending the local
  files (no broker, no store, no state);
* **baseline** (only with ``--baseline DIR``): the exporter of another checkout (for
  example ``git archive HEAD`` unpacked in a folder), as a second process on a RabbitMQ
  vhost of its own, timed like seriesflow in the same runs: a change is measured against
  the code before it, not against another invocation on a machine whose load varies.

Runs are interleaved (the order alternates) after one uncounted warm-up of each; before
every run the destination's folder is emptied and flushed (``sync``). Each run's file count
at the destination is checked. Throughput is files per second from the median time; the
target is seriesflow >= 0.5 x storescu. Results go to ``bench/results/export.json``. A
missed target is a measurement: the exit status is 0 unless something could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_service import bench_settings  # noqa: E402

from services.exporter.association import StoreAssociation, plan_associations  # noqa: E402
from services.exporter.meta import HEAD_BYTES, FileMeta, parse_file_meta  # noqa: E402
from services.exporter.status import StoreOutcome  # noqa: E402
from shared import keys  # noqa: E402
from shared.broker import Broker  # noqa: E402
from shared.config import DestinationConfig  # noqa: E402
from shared.events import EXCHANGE, Envelope, ExportCompleted, ExportRequested, new_id  # noqa: E402
from shared.manifest import InstanceRef, JobManifest  # noqa: E402
from shared.samples import write_ct_series  # noqa: E402
from shared.settings import ServiceSettings  # noqa: E402
from shared.store import ObjectStore  # noqa: E402
from tests.integration.infra import (  # noqa: E402
    dcmtk,
    dcmtk_available,
    free_port,
    rabbitmq_vhost,
    start_seaweedfs,
    wait_for_port,
)

RESULTS = REPO / "bench" / "results" / "export.json"
TARGET = 0.5  # seriesflow files/s over storescu files/s
OBSERVER = "bench.export-completed"


class Destination:
    """dcmtk storescp writing to a folder, ``TCP_NODELAY=1``."""

    def __init__(self, folder: Path, log: Path, max_pdu: int | None) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True)
        command = [dcmtk("storescp"), "--fork", "-aet", "DEST", "-od", str(folder)]
        if max_pdu:
            command += ["--max-pdu", str(max_pdu)]
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [*command, str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        wait_for_port(self.port, 10)

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()
        os.sync()

    def count(self) -> int:
        return sum(1 for _ in self.folder.iterdir())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


def storescu(folder: Path, port: int, max_pdu: int | None) -> float:
    command = [
        dcmtk("storescu"),
        "-aet",
        "STORESCU",
        "-aec",
        "DEST",
        "--scan-directories",
        "--required",
    ]
    if max_pdu:
        command += ["--max-pdu", str(max_pdu)]
    start = time.perf_counter()
    result = subprocess.run(
        [*command, "127.0.0.1", str(port), str(folder)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TCP_NODELAY="1"),
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def transport_only(files: list[Path], port: int) -> float:
    """The exporter's association code alone: local files, no broker, no store, no state."""
    metas = []
    for path in files:
        meta = parse_file_meta(path.read_bytes()[:HEAD_BYTES])
        assert isinstance(meta, FileMeta)
        metas.append(meta)
    destination = DestinationConfig.model_validate(
        {"name": "bench", "host-ip": "127.0.0.1", "port": port, "ae-title": "DEST"}
    )
    start = time.perf_counter()
    (plan,) = plan_associations([(m.sop_class_uid, m.transfer_syntax_uid) for m in metas])
    association = StoreAssociation(destination, "SERIESFLOW", plan.contexts)
    association.open()
    try:
        for path, meta in zip(files, metas, strict=True):
            result = association.send(path, meta)
            if result.outcome is not StoreOutcome.CONFIRMED:
                raise RuntimeError(f"transport: {result.outcome} {result.detail}")
    finally:
        association.close()
    return time.perf_counter() - start


class Exporter:
    """``seriesflow exporter`` as a process, and a queue on ``export.completed``."""

    def __init__(
        self,
        settings: ServiceSettings,
        config: Path,
        log: Path,
        lag: int | None,
        associations: int | None,
        extra_env: dict[str, str],
        repo: Path = REPO,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
        env.update(
            {
                "SERIESFLOW_CONFIG": str(config),
                "SERIESFLOW_AMQP_URL": settings.amqp_url.get_secret_value(),
                "SERIESFLOW_S3_ENDPOINT": settings.s3_endpoint,
                "SERIESFLOW_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
                "SERIESFLOW_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
                "SERIESFLOW_S3_BUCKET": settings.s3_bucket,
                "SERIESFLOW_LOG_LEVEL": "INFO",
            }
        )
        if associations is not None:  # else the exporter's defaults (scu max-associations)
            env["SERIESFLOW_EXPORTER_ASSOCIATIONS"] = str(associations)
            env["SERIESFLOW_EXPORTER_WORKERS"] = "1"
        if lag is not None:
            env["SERIESFLOW_EXPORTER_STATE_LAG"] = str(lag)
        env.update(extra_env)
        self.log_path = log
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "seriesflow", "exporter"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=repo,
        )
        self.broker = Broker(settings, "bench")
        self.broker.connect(attempts=3)
        channel = self.broker.channel
        channel.queue_declare(OBSERVER, durable=True)
        channel.queue_bind(OBSERVER, EXCHANGE, routing_key="export.completed")
        self._wait_consuming()

    def _wait_consuming(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the exporter exited: {self.log_path.read_text()[-2000:]}")
            try:
                if self.broker.stats("exporter").consumers > 0:
                    return
            except Exception:
                self.broker.close()
                self.broker.connect(attempts=3)
            time.sleep(0.1)
        raise TimeoutError("the exporter did not start consuming")

    def export(self, job: str, instance_keys: list[str]) -> tuple[float, ExportCompleted]:
        export = new_id()
        body = ExportRequested(
            export_id=export,
            destination="bench",
            pipeline="bench",
            selection="all",
            instance_keys=instance_keys,
        )
        request = Envelope.wrap(body, job_id=job, producer="bench", event_id=new_id())
        start = time.perf_counter()
        self.broker.publish(request)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            method, _, data = self.broker.channel.basic_get(OBSERVER, auto_ack=True)
            if method is None:
                time.sleep(0.002)
                continue
            envelope = Envelope.from_bytes(data)
            if isinstance(envelope.body, ExportCompleted) and envelope.body.export_id == export:
                return time.perf_counter() - start, envelope.body
        raise TimeoutError("no export.completed within 600 s")

    def stop(self) -> None:
        self.broker.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def export_seconds(log: Path) -> list[float]:
    """The exporter's own time per export (from its ``export completed`` log lines)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"export completed"' in line:
            with contextlib.suppress(ValueError, KeyError):
                found.append(float(json.loads(line)["seconds"]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs of each (default 5)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--max-pdu",
        type=int,
        default=None,
        help="storescp's and storescu's --max-pdu (default: dcmtk's own, 16384)",
    )
    parser.add_argument(
        "--state-lag",
        type=int,
        default=None,
        help="SERIESFLOW_EXPORTER_STATE_LAG for the exporter (default: the exporter's, 16)",
    )
    parser.add_argument(
        "--associations",
        type=int,
        default=None,
        help=(
            "SERIESFLOW_EXPORTER_ASSOCIATIONS, with SERIESFLOW_EXPORTER_WORKERS=1 (default: "
            "neither set, the exporter's defaults: max-associations 2 shared by the exports "
            "at once, so an export alone sends over 2)"
        ),
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another SERIESFLOW_EXPORTER_* setting for the exporter (repeatable)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also time the exporter of the checkout in DIR (same settings), interleaved",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (dcmtk_available("storescu") and dcmtk_available("storescp")):
        print("dcmtk (storescu, storescp) is not installed: bash scripts/setup.sh", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-export-", dir=args.workdir))
    s3 = start_seaweedfs(work / "s3")
    try:
        with rabbitmq_vhost() as amqp, contextlib.ExitStack() as more:
            settings = bench_settings(
                amqp, s3.endpoint, s3.access_key, s3.secret_key, "bench-export"
            )
            baseline = None
            if args.baseline is not None:
                other = more.enter_context(rabbitmq_vhost())
                baseline = bench_settings(
                    other, s3.endpoint, s3.access_key, s3.secret_key, "bench-export"
                )
            return run(args, work, settings, baseline)
    finally:
        s3.stop()
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace,
    work: Path,
    settings: ServiceSettings,
    baseline_settings: ServiceSettings | None = None,
) -> int:
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load:.1f}; timings may be noisy", file=sys.stderr)
    source = work / "ct"
    files = sorted(write_ct_series(source, slices=args.slices, size=args.size, seed=7))
    store = ObjectStore(settings)
    store.ensure_bucket()
    job, instance_keys = upload(store, files)
    total_mib = sum(p.stat().st_size for p in files) / (1024 * 1024)

    destination = Destination(work / "received", work / "storescp.log", args.max_pdu)
    config = work / "seriesflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dicom": {
                    "scu": {
                        "ae-title": "SERIESFLOW",
                        "destinations": [
                            {
                                "name": "bench",
                                "host-ip": "127.0.0.1",
                                "port": destination.port,
                                "ae-title": "DEST",
                            }
                        ],
                    }
                }
            }
        )
    )
    exporter_log = work / "exporter.log"
    extra_env = dict(item.split("=", 1) for item in args.env)
    exporters = {
        "seriesflow": Exporter(
            settings, config, exporter_log, args.state_lag, args.associations, extra_env
        )
    }
    times: dict[str, list[float]] = {"seriesflow": [], "storescu": [], "transport": []}
    if baseline_settings is not None:
        exporters["baseline"] = Exporter(
            baseline_settings,
            config,
            work / "baseline.log",
            args.state_lag,
            args.associations,
            extra_env,
            repo=args.baseline.resolve(),
        )
        times["baseline"] = []
    tools = list(times)
    try:
        for index in range(args.runs + 1):
            turn = index % len(tools)
            order = tools[turn:] + tools[:turn]
            for tool in order:
                destination.clear()
                if tool == "storescu":
                    seconds = storescu(source, destination.port, args.max_pdu)
                elif tool == "transport":
                    seconds = transport_only(files, destination.port)
                else:
                    seconds, completed = exporters[tool].export(job, instance_keys)
                    if completed.status != "succeeded" or any(
                        f.status != "sent" for f in completed.files
                    ):
                        raise RuntimeError(f"export did not succeed: {completed.status}")
                arrived = destination.count()
                if arrived != len(files):
                    raise RuntimeError(f"{tool}: {arrived} of {len(files)} files arrived")
                if index:
                    times[tool].append(seconds)
                label = "warm-up" if index == 0 else f"run {index}/{args.runs}"
                print(f"{label:>10}  {tool:<10} {seconds:7.3f} s", file=sys.stderr)
    finally:
        for exporter in exporters.values():
            exporter.stop()
        destination.stop()

    median = {tool: statistics.median(values) for tool, values in times.items()}
    rate = {tool: len(files) / seconds for tool, seconds in median.items()}
    ratio = rate["seriesflow"] / rate["storescu"]
    inside = export_seconds(exporter_log)[1:]  # without the warm-up
    report: dict[str, Any] = {
        "input": {
            "files": len(files),
            "size": args.size,
            "mib": round(total_mib, 1),
            "runs": args.runs,
            "max_pdu": args.max_pdu or 16384,
            "state_lag": args.state_lag if args.state_lag is not None else "default (16)",
            "associations": args.associations or "default (max-associations 2)",
            "exporter_env": args.env,
        },
        "seconds": times,
        "median_seconds": median,
        "files_per_second": rate,
        "mib_per_second": {tool: total_mib / seconds for tool, seconds in median.items()},
        "exporter_internal_median_seconds": statistics.median(inside) if inside else None,
        "ratio": ratio,
        "transport_ratio": rate["transport"] / rate["storescu"],
        "baseline_ratio": rate["baseline"] / rate["storescu"] if "baseline" in rate else None,
        "baseline": str(args.baseline) if args.baseline else None,
        "target": TARGET,
        "met": ratio >= TARGET,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": load,
            "python": platform.python_version(),
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1))
    print()
    print(f"{len(files)} files, {total_mib:.0f} MiB, to storescp (max PDU {args.max_pdu or 16384})")
    for tool in tools:
        print(
            f"  {tool:<10} median {median[tool]:7.3f} s  {rate[tool]:8.1f} files/s  "
            f"{total_mib / median[tool]:7.1f} MiB/s   runs: "
            + ", ".join(f"{v:.3f}" for v in times[tool])
        )
    if inside:
        print(
            f"  (exporter's own time per export, message in hand to outcome recorded: "
            f"median {statistics.median(inside):.3f} s)"
        )
    print(
        "  (transport: the exporter's association code alone, sending the local files in "
        f"one association: {rate['transport'] / rate['storescu']:.2f} x storescu)"
    )
    if "baseline" in rate:
        print(
            f"  (baseline: the exporter of {args.baseline}: "
            f"{rate['baseline'] / rate['storescu']:.2f} x storescu)"
        )
    print(
        f"{'PASS' if ratio >= TARGET else 'MISS'}  seriesflow / storescu throughput "
        f"{ratio:.2f} (target >= {TARGET})"
    )
    print(f"results written to {args.results}")
    return 0


def upload(store: ObjectStore, files: list[Path]) -> tuple[str, list[str]]:
    """The files in the store and the job manifest, as the receiver leaves them."""
    association, job = new_id(), new_id()
    instances = []
    for path in files:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        key = keys.incoming_instance(association, str(dataset.SOPInstanceUID))
        store.put_file(key, path)
        instances.append(InstanceRef.from_dataset(key, dataset))
    manifest = JobManifest(
        job_id=job,
        pipeline="bench",
        called_ae_title="SERIESFLOW",
        calling_ae_title="MODALITY",
        associations=[association],
        instances=instances,
    )
    store.put_bytes(keys.manifest(job), manifest.model_dump_json().encode(), "application/json")
    return job, [i.key for i in instances]


if __name__ == "__main__":
    sys.exit(main())
