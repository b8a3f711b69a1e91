"""Every row of issue 10's table against its peer, in one run, as one table.

Run from the repository root (needs RabbitMQ on 127.0.0.1:5672, dcmtk, dcm2niix and the
test data; the service benchmarks start SeaweedFS themselves):

    .venv/bin/python bench/bench_all.py                     # the whole run, 5 runs a row
    .venv/bin/python bench/bench_all.py --runs 7 --only receive latency
    .venv/bin/python bench/bench_all.py --quick --only process   # smoke check, seconds

It runs the benchmark scripts beside it, each as its own process (so each child's time
and peak memory are its own), every one with ``--runs`` counted runs after a warm-up and
its results in ``bench/results/all-<time>/``, then reads their JSON and prints one table in
the issue's shape: stage | seriesflow | peer | ratio | target | PASS/MISS. It also prints
the scale run (300, 1,500 and 5,000 instances: time and peak memory of receiver, parser
and selector) and two parsers against one. What was run, the machine and its load average
before and after go with the table into ``bench/results/all.json`` and a Markdown summary
(``bench/results.md`` for a whole run of at least 5 runs a row, to be committed by whoever
ran it; ``bench/results/summary.md`` otherwise, which never replaces it).

A missed target is a measurement: the exit status is 1 only when a benchmark could not
run (its log's end is shown).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS_DIR,
    at_least,
    at_most,
    duration,
    load_line,
    machine,
    machine_probes,
    probes_line,
    ratio,
    table,
    tail,
    verdict,
    warn_if_busy,
)

BENCH = REPO / "bench"
ROWS = ("receive", "latency", "export", "process", "folders", "scale", "parsers")
SUMMARY = BENCH / "results.md"
DURATIONS = RESULTS_DIR / "durations.json"
MONAI_PEER = "MONAI Informatics Gateway: 14 s, 324-slice CT (published, 48 vCPU; not run here)"
RUN_OPTIONS = ("--runs", "--pair-runs")  # the scripts' numbers of runs
HEADER = ("stage", "seriesflow", "peer", "ratio", "target", "verdict")


@dataclass
class Row:
    """One line of the table."""

    stage: str
    seriesflow: str
    peer: str
    ratio: str
    target: str
    verdict: str

    def cells(self) -> list[str]:
        return [self.stage, self.seriesflow, self.peer, self.ratio, self.target, self.verdict]


@dataclass
class Job:
    """One benchmark script run for some of the rows."""

    name: str  # its results file is <name>.json, its output <name>.log
    rows: tuple[str, ...]
    argv: Callable[[argparse.Namespace, list[str]], list[str]]
    estimate: Callable[[argparse.Namespace], float]  # seconds on an idle machine


def service_argv(args: argparse.Namespace, rows: list[str]) -> list[str]:
    parts = [part for part in ("receive", "latency") if part in rows]
    argv = ["bench_service.py", "--runs", str(args.runs), "--parts", *parts]
    return argv + (["--slices", "40", "--size", "128"] if args.quick else [])


def export_argv(args: argparse.Namespace, rows: list[str]) -> list[str]:
    argv = ["bench_export.py", "--runs", str(args.runs)]
    return argv + (["--slices", "40", "--size", "128"] if args.quick else [])


def process_argv(args: argparse.Namespace, rows: list[str]) -> list[str]:
    argv = ["bench_process.py", "--runs", str(args.runs), "--formats", "nii"]
    return argv + (["--slices", "40", "--size", "128"] if args.quick else [])


def folders_argv(args: argparse.Namespace, rows: list[str]) -> list[str]:
    argv = ["bench_folders.py", "--runs", str(args.runs)]
    return argv + (["--folders", "dcm_qa_nih"] if args.quick else [])


def scale_argv(args: argparse.Namespace, rows: list[str]) -> list[str]:
    parts = [part for part, row in (("scale", "scale"), ("pair", "parsers")) if row in rows]
    argv = ["bench_service_scale.py", "--parts", *parts, "--runs", str(args.scale_runs)]
    argv += ["--pair-runs", str(args.runs)]
    if args.quick:
        argv += ["--counts", "50", "150", "--pair-slices", "30", "--pair-size", "64"]
    return argv


# Estimates (seconds, idle 2-CPU machine, the default sizes): setup + per round (the
# warm-up and each counted run). A busy machine takes two to four times as long. Scaled to
# the last measured duration of the same job and data (bench/results/durations.json)
# where there is one.
def _estimate(setup: float, per_run: float, quick: float) -> Callable[[argparse.Namespace], float]:
    def estimate(args: argparse.Namespace) -> float:
        runs: int = args.runs
        return quick * runs if args.quick else setup + per_run * (runs + 1)

    return estimate


JOBS = (
    Job("service", ("receive", "latency"), service_argv, _estimate(40, 21, 45)),
    Job("export", ("export",), export_argv, _estimate(30, 5, 30)),
    Job("process", ("process",), process_argv, _estimate(8, 4, 15)),
    Job("folders", ("folders",), folders_argv, _estimate(10, 50, 20)),
    Job("service-scale", ("scale", "parsers"), scale_argv, _estimate(200, 12, 60)),
)


def job_key(job: Job, args: argparse.Namespace) -> str:
    """The job and its options but the numbers of runs, as its duration is recorded."""
    argv = job.argv(args, args.only)[1:]
    kept: list[str] = []
    for index, arg in enumerate(argv):
        if arg not in RUN_OPTIONS and (index == 0 or argv[index - 1] not in RUN_OPTIONS):
            kept.append(arg)
    return " ".join([job.name, *kept])


def expected_seconds(job: Job, args: argparse.Namespace, measured: dict[str, Any]) -> float:
    """The estimate, scaled by the last measured duration of the same job and data (taken
    with ``runs`` counted runs) over the estimate for that many runs."""
    estimate = job.estimate(args)
    found = measured.get(job_key(job, args))
    if not isinstance(found, dict):
        return estimate
    then = argparse.Namespace(**{**vars(args), "runs": found["runs"]})
    return float(found["seconds"]) * estimate / job.estimate(then)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="counted runs a row (default 5)")
    parser.add_argument(
        "--only", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW", help=", ".join(ROWS)
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: small data, 1 run unless --runs (figures mean nothing)",
    )
    parser.add_argument(
        "--scale-runs", type=int, default=1, help="runs of each count in the scale run"
    )
    parser.add_argument("--summary", type=Path, help="Markdown summary (default: see above)")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.runs < 1 or args.scale_runs < 1:
        parser.error("--runs and --scale-runs must be at least 1")
    whole = not args.quick and set(args.only) == set(ROWS) and args.runs >= 5
    summary_path = args.summary or (SUMMARY if whole else RESULTS_DIR / "summary.md")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS_DIR / f"all-{stamp}"
    out.mkdir(parents=True, exist_ok=True)

    jobs = [job for job in JOBS if set(job.rows) & set(args.only)]
    measured = read_json(DURATIONS) or {}
    expected = {job.name: expected_seconds(job, args, measured) for job in jobs}
    estimated = [job.name for job in jobs if job_key(job, args) not in measured]
    print(
        f"bench_all: rows {', '.join(args.only)}; {args.runs} counted run(s) each"
        f"{' (quick: small data)' if args.quick else ''}; expected duration about "
        f"{duration(sum(expected.values()))} ("
        + (f"{', '.join(estimated)}: estimates for an idle machine; " if estimated else "")
        + "scaled to the durations of the last run of the same data where there is one: "
        "bench/results/durations.json)"
    )
    if args.runs < 5 and not args.quick:
        print("note: fewer than 5 runs a row: issue 10 asks for medians of at least 5")
    load_before = warn_if_busy()
    probes = {"before": machine_probes()}  # on the machine as the runs find it
    print(f"probes before the runs: {probes_line(probes['before'])}", flush=True)
    started = time.perf_counter()
    reports: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    durations: dict[str, float] = {}
    commands: dict[str, list[str]] = {}
    for index, job in enumerate(jobs, start=1):
        script_argv = job.argv(args, args.only)
        results = out / f"{job.name}.json"
        command = [sys.executable, str(BENCH / script_argv[0]), *script_argv[1:]]
        command += ["--results", str(results)]
        commands[job.name] = command
        print(
            f"[{index}/{len(jobs)}] {' '.join(script_argv)}  (about "
            f"{duration(expected[job.name])}; output in {out / job.name}.log)",
            flush=True,
        )
        begun = time.perf_counter()
        status = run_script(command, out / f"{job.name}.log")
        durations[job.name] = time.perf_counter() - begun
        measured[job_key(job, args)] = {"runs": args.runs, "seconds": round(durations[job.name])}
        report = read_json(results)
        if status != 0 or report is None:
            failures[job.name] = f"exit status {status}\n{tail(out / f'{job.name}.log', 25)}"
            print(f"  FAILED: {failures[job.name]}", file=sys.stderr)
        else:
            reports[job.name] = report
        print(f"  done in {duration(durations[job.name])}", flush=True)
    elapsed = time.perf_counter() - started
    probes["after"] = machine_probes()  # as the runs leave it
    print(f"probes after the runs: {probes_line(probes['after'])}", flush=True)

    rows = build_rows(reports, args.only)
    scale_lines = scale_section(reports.get("service-scale"))
    host = machine(load_before)
    host["probes"] = probes
    combined: dict[str, Any] = {
        "benchmark": "all",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": {"runs": args.runs, "quick": args.quick, "only": args.only},
        "machine": host,
        "seconds": round(elapsed, 1),
        "durations": {k: round(v, 1) for k, v in durations.items()},
        "commands": commands,
        "rows": [asdict(row) for row in rows],
        "failures": failures,
        "reports": reports,
    }
    lines = table(HEADER, (row.cells() for row in rows))
    print()
    print("\n".join(lines))
    if scale_lines:
        print("\n" + "\n".join(scale_lines))
    print(
        f"\nmedians of {args.runs} counted run(s) a row; whole run {duration(elapsed)}; "
        f"{load_line(host)}"
    )
    for name in failures:
        print(f"FAILED: {name} (see {out / name}.log)")
    (out / "all.json").write_text(json.dumps(combined, indent=2) + "\n")
    (RESULTS_DIR / "all.json").write_text(json.dumps(combined, indent=2) + "\n")
    DURATIONS.write_text(json.dumps(measured, indent=2) + "\n")
    summary_path.write_text(markdown(combined, lines, scale_lines, argv))
    print(f"results: {out}/ and {RESULTS_DIR / 'all.json'}; summary: {summary_path}")
    return 1 if failures else 0


def run_script(command: list[str], log: Path) -> int:
    """Runs a benchmark script from the repository root, its output into ``log``."""
    with log.open("w") as output:
        done = subprocess.run(
            command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, check=False
        )
    return done.returncode


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the table ------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def build_rows(reports: dict[str, dict[str, Any]], only: list[str]) -> list[Row]:
    """The table's rows, in the issue's order, from the scripts' result files."""
    builders: dict[str, Callable[[dict[str, dict[str, Any]]], list[Row]]] = {
        "receive": receive_rows,
        "latency": latency_rows,
        "export": export_rows,
        "process": process_rows,
        "folders": folder_rows,
        "scale": scale_rows,
        "parsers": parser_rows,
    }
    rows: list[Row] = []
    for name in ROWS:
        if name in only:
            try:
                rows += builders[name](reports)
            except (KeyError, TypeError, ValueError) as exc:
                rows.append(Row(name, "no result", "", "", "", f"n/a ({exc!r})"))
    return rows


def receive_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    service = reports["service"]
    receive, files = service["receive"], service["input"]
    size, target = files["size"], receive["target"]
    rate = receive["instances_per_second"]
    cases = (
        ("", f"receive a {files['files']} x {size}² CT, durable before success", "ratio"),
        ("_x4", f"the same, {receive['concurrent']} storescu at once to each side", "ratio_x4"),
    )
    peers = {"": "dcmtk storescp, TCP_NODELAY=1", "_x4": "storescp --fork"}
    return [
        Row(
            stage,
            f"{rate['seriesflow' + suffix]:.0f} instances/s",
            f"{peers[suffix]}: {rate['storescp' + suffix]:.0f}/s",
            fmt(receive[key]),
            f">= {target}",
            verdict(at_least(receive[key], target)),
        )
        for suffix, stage, key in cases
    ] + _store_paused_row(receive, rate)


def _store_paused_row(receive: dict[str, Any], rate: dict[str, float]) -> list[Row]:
    """The receiver's own path, for information: the object store paused during the send."""
    if receive.get("ratio_store_paused") is None:
        return []
    return [
        Row(
            "the same, object store paused (SIGSTOP) during the send: the receiver's own path",
            f"{rate['seriesflow_store_paused']:.0f} instances/s",
            f"dcmtk storescp: {rate['storescp']:.0f}/s",
            fmt(receive["ratio_store_paused"]),
            "(information)",
            "-",
        )
    ]


def latency_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    latency = reports["service"]["latency"]
    value, target = latency["median_seconds"], latency["target_seconds"]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in latency["stage_median_seconds"].items())
    return [
        Row(
            "association release -> selected-images.json in the store",
            f"{value:.2f} s ({stages})",
            MONAI_PEER,
            "-",
            f"<= {target} s",
            verdict(at_most(value, target)),
        ),
        *_cpu_floor_row(latency),
    ]


def _cpu_floor_row(latency: dict[str, Any]) -> list[Row]:
    """For information: the CPU time the services and the object store spent after the
    release, over the CPUs: no overlap of the steps gets the latency below it."""
    floor = latency.get("cpu_floor_median_seconds")
    if floor is None:
        return []
    used = latency["cpu_after_release_median_seconds"]
    return [
        Row(
            "the same: CPU time after the release / CPUs (a floor under the latency)",
            f"{floor:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in used.items()) + " CPU s)",
            "-",
            "-",
            "(information)",
            "-",
        )
    ]


def export_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    export = reports["export"]
    rate = export["files_per_second"]
    return [
        Row(
            f"export the same series ({export['input']['files']} x {export['input']['size']}²)",
            f"{rate['seriesflow']:.0f} files/s",
            f"dcmtk storescu: {rate['storescu']:.0f}/s",
            fmt(export["ratio"]),
            f">= {export['target']}",
            verdict(at_least(export["ratio"], export["target"])),
        )
    ]


def process_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    process = reports["process"]
    params, variants = process["parameters"], process["variants"]
    sf, d2n = variants["seriesflow_nii"], variants["dcm2niix_zn"]
    speed, memory = process["targets"]["speed_nii"], process["targets"]["peak_memory_nii"]
    ct = f"{params['slices']} x {params['size']}² CT"
    return [
        Row(
            f"`seriesflow process --format nii`, whole process, {ct}",
            fmt(sf.get("median_seconds"), unit=" s"),
            f"dcm2niix -z n: {fmt(d2n.get('median_seconds'), unit=' s')}",
            fmt(speed["value"], 1),
            f"<= {speed['limit']}",
            verdict(speed["pass"]),
        ),
        Row(
            f"peak memory, the same CT ({params['volume_mib']:.0f} MiB volume)",
            fmt(memory["value_mib"], 0, " MiB"),
            f"dcm2niix -z n: {fmt(d2n.get('peak_max_rss_mib'), 0, ' MiB')}",
            fmt(ratio(memory["value_mib"], d2n.get("peak_max_rss_mib")), 1),
            f"<= {memory['limit_mib']:.0f} MiB (3 x volume + 150)",
            verdict(memory["pass"]),
        ),
    ]


def folder_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    folders = reports["folders"]["folders"]
    limit = reports["folders"]["targets"]["speed_limit"]
    time_rows, memory_rows = [], []
    for name, row in folders.items():
        if "error" in row:
            time_rows.append(Row(f"`seriesflow process` on {name}", "failed", "", "", "", "n/a"))
            continue
        sf, d2n = row["seriesflow"], row["dcm2niix"]
        largest = sf["largest_volume_mib"]
        speed, memory = (
            Row(stage, value, peer, quotient, target, verdict(ok))
            for stage, value, peer, quotient, target, ok in (
                (
                    f"`seriesflow process` on {name} ({row['files']:,} files)",
                    f"{sf['median_seconds']:.2f} s",
                    f"dcm2niix -z n: {d2n['median_seconds']:.2f} s",
                    fmt(row["ratio"], 1),
                    f"<= {limit}",
                    row["speed_pass"],
                ),
                (
                    f"peak memory on {name} (largest volume {largest:.1f} MiB)",
                    f"{sf['peak_max_rss_mib']:.0f} MiB",
                    f"dcm2niix: {d2n['peak_max_rss_mib']:.0f} MiB",
                    fmt(row["memory_ratio_to_dcm2niix"], 1),
                    f"<= {row['memory_limit_mib']:.0f} MiB (3 x largest volume + 150)",
                    row["memory_pass"],
                ),
            )
        )
        time_rows.append(speed)
        memory_rows.append(memory)
    return time_rows + memory_rows


def scale_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    scale = reports["service-scale"]["scale"]
    small, large = scale["rows"][0], scale["rows"][-1]
    judged = scale["judged"]
    n_small, n_large = f"{small['instances']:,}", f"{large['instances']:,}"
    rows = []
    for stage, label in (
        ("receive", "receive"),
        ("parse", "release -> job.parsed"),
        ("select", "job.parsed -> job.selected"),
    ):
        verdict_of = judged.get(f"{stage}_time", {})
        rows.append(
            Row(
                f"scale {n_small} -> {n_large} instances: {label}, s per 1,000",
                f"{large[f'{stage}_per_1000']:.2f} at {n_large}",
                f"{small[f'{stage}_per_1000']:.2f} at {n_small}",
                fmt(verdict_of.get("ratio")),
                f"<= {verdict_of.get('target', '-')} (linear)",
                verdict(verdict_of.get("pass")),
            )
        )
    for name in ("receiver", "parser", "selector"):
        verdict_of = judged.get(f"{name}_memory", {})
        low, high = small["peak_mib"][name], large["peak_mib"][name]
        rows.append(
            Row(
                f"scale {n_small} -> {n_large} instances: {name} peak RSS",
                f"{fmt(high, 0)} MiB at {n_large}",
                f"{fmt(low, 0)} MiB at {n_small}",
                fmt(verdict_of.get("growth_mib"), 0, " MiB") if verdict_of else "-",
                f"growth <= {fmt(verdict_of.get('allowed_mib'), 0)} MiB (flat)",
                verdict(verdict_of.get("pass")),
            )
        )
    return rows


def parser_rows(reports: dict[str, dict[str, Any]]) -> list[Row]:
    pair = reports["service-scale"]["pair"]
    return [
        Row(
            f"two parsers on two jobs at once ({pair['slices']} x {pair['size']}² each)",
            f"{pair['two_median_seconds']:.2f} s",
            f"one parser on one job: {pair['one_median_seconds']:.2f} s",
            fmt(pair["ratio"]),
            f"<= {pair['target']} (about 1 on 2 CPUs)",
            verdict(pair["pass"]),
        )
    ]


def scale_section(report: dict[str, Any] | None) -> list[str]:
    """The scale run's own table (from bench_service_scale.py), when it ran."""
    if report is None or "scale" not in report:
        return []
    from bench_service_scale import scale_table  # its imports are the services' own

    return scale_table(report["scale"])


def markdown(
    combined: dict[str, Any], lines: list[str], scale_lines: list[str], argv: list[str] | None
) -> str:
    host = combined["machine"]
    options = " ".join(sys.argv[1:] if argv is None else argv)
    memory = host["memory_mib"]
    quick_note = "; `--quick`: small data, the figures mean nothing"
    busy = max(host["load_average_before_after"]) >= 0.5 * (host["cpus"] or 1)
    text = [
        "# Benchmarks: issue 10's table, one run of `bench/bench_all.py`",
        "",
        f"- Date: {combined['created']}",
        f"- Command: `.venv/bin/python bench/bench_all.py{' ' + options if options else ''}`",
        f"- Machine: {host['cpus']} CPUs, "
        f"{'?' if memory is None else f'{memory / 1024:.1f} GiB'} memory, {host['platform']}, "
        f"Python {host['python']}",
        f"- Load average (1 min) before / after: {host['load_average_before_after'][0]} / "
        f"{host['load_average_before_after'][1]}"
        + (" (a busy machine: the figures are noisy)" if busy else ""),
        *(
            f"- Probes {when} the runs: {probes_line(host['probes'][when])} (bench/README.md)"
            for when in ("before", "after")
            if when in host.get("probes", {})
        ),
        f"- Medians of {combined['options']['runs']} counted run(s) a row, after a warm-up"
        + (quick_note if combined["options"]["quick"] else "")
        + f"; whole run {duration(combined['seconds'])}",
        "",
        *lines,
        "",
    ]
    if scale_lines:
        text += ["## Scale run", "", *scale_lines, ""]
    if combined["failures"]:
        text += ["## Could not run", ""]
        text += [f"- {name}: see bench/results/" for name in combined["failures"]]
        text += [""]
    text += [
        "Raw figures: `bench/results/all.json` (not committed). How to read this table: "
        "bench/README.md.",
        "",
    ]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
