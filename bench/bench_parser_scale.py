"""The parser's own work at scale: time and peak memory against the number of instances.

Run from the repository root:

    .venv/bin/python bench/bench_parser_scale.py [--runs 5] [--sizes 300 1500 5000]

What is measured is the parser service's work on one job once its instances are local:
:func:`shared.operator.parser.parse_folder` and :func:`write_parser_outputs`, the same two
calls ``services/parser/parsing.py`` makes between the download and the upload. Each run
is a fresh child process (from the same bare launcher as ``bench_process.py``, so its peak
RSS is its own); the time counted starts after the imports, because the parser service is
long-lived and imports once. The transfers to and from the object store are not in it.

1. **Scale**: one study of N instances (one axial CT series of N slices of ``--size``
   pixels, default 128 x 128, so that 5,000 instances are a 156 MiB volume), N = 300,
   1,500 and 5,000. Target: time linear in N (seconds per 1,000 instances about the same
   at every N) and the memory beyond the volume flat.
2. **Two at once**: two parsers, each on its own job of ``--pair`` instances, started
   together, against one parser on one job. On two CPUs the pair should take about as
   long as one.

Results go to ``bench/results/parser_scale.json``. The receiver's and selector's rows of
the same table are measured elsewhere; a missed target is a measurement (exit status 0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    MIB,
    REPO,
    RESULTS_DIR,
    child_env,
    collect,
    created,
    launch,
    load_line,
    machine,
    median,
    per_thousand,
    warn_if_busy,
    write_results,
)

from shared.samples import write_ct_series

RESULTS = RESULTS_DIR / "parser_scale.json"

# Run by the launcher in a child: imports first, then the parser's work, timed.
_DRIVER = r"""
import sys, time
from pathlib import Path
from shared.operator.parser import parse_folder, write_parser_outputs
from shared.volumes.convert import ConversionOptions
start = time.perf_counter()
metadata = parse_folder(Path(sys.argv[1]), Path(sys.argv[2]), ConversionOptions(image_format="nii"))
write_parser_outputs(metadata, Path(sys.argv[2]))
print(f"PARSE_SECONDS {time.perf_counter() - start}", file=sys.stderr)
"""


def start(job: Path, out: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return launch([sys.executable, "-c", _DRIVER, str(job), str(out)], log, 3600, env, REPO)


def finish(process: subprocess.Popen[str], log: Path) -> dict[str, float]:
    outcome = collect(process, log)
    text = log.read_text(errors="replace")
    parse = [line.split()[1] for line in text.splitlines() if line.startswith("PARSE_SECONDS")]
    if outcome.returncode != 0 or not parse:
        raise RuntimeError(f"parser run failed (exit {outcome.returncode}):\n{text[-2000:]}")
    return {
        "process_seconds": outcome.seconds,
        "parse_seconds": float(parse[0]),
        "max_rss_mib": round(outcome.max_rss_mib, 1),
    }


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1500, 5000])
    parser.add_argument("--size", type=int, default=128, help="rows and columns per slice")
    parser.add_argument("--pair", type=int, default=300, help="instances per job, two at once")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    env = child_env()
    env["PYTHONPATH"] = str(REPO)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-parser-", dir=args.workdir))
    load_before = warn_if_busy()
    try:
        scale: dict[str, Any] = {}
        for n in args.sizes:
            job = work / f"job-{n}"
            write_ct_series(job, slices=n, size=args.size, seed=n)
            runs = []
            for r in range(args.runs + 1):  # the first is a warm-up
                outcome = finish(start(job, work / "out", work / "log.txt", env), work / "log.txt")
                if r:
                    runs.append(outcome)
            volume_mib = n * args.size * args.size * 2 / MIB
            parse = median_of(runs, "parse_seconds")
            peak = max(r["max_rss_mib"] for r in runs)
            scale[str(n)] = {
                "instances": n,
                "runs": runs,
                "median_parse_seconds": parse,
                "seconds_per_1000": per_thousand(parse, n),
                "peak_rss_mib": peak,
                "volume_mib": round(volume_mib, 1),
                "peak_beyond_volume_mib": round(peak - volume_mib, 1),
            }
            print(f"  scale {n}: done", file=sys.stderr)
            shutil.rmtree(job)

        jobs = [work / "pair-a", work / "pair-b"]
        for seed, job in enumerate(jobs, start=1):
            write_ct_series(job, slices=args.pair, size=args.size, seed=seed)
        one: list[dict[str, float]] = []
        two: list[float] = []
        for r in range(args.runs + 1):
            single = finish(start(jobs[0], work / "o1", work / "l1.txt", env), work / "l1.txt")
            began = time.perf_counter()
            pair = [
                start(job, work / f"o-{i}", work / f"l-{i}.txt", env) for i, job in enumerate(jobs)
            ]
            outcomes = [finish(p, work / f"l-{i}.txt") for i, p in enumerate(pair)]
            elapsed = time.perf_counter() - began
            if r:
                one.append(single)
                two.append(elapsed)
                del outcomes
        single_seconds = median_of(one, "process_seconds")
        pair_seconds = median(two)
        report = {
            "benchmark": "parser_scale",
            "created": created(),
            "parameters": {"runs": args.runs, "size": args.size, "pair": args.pair},
            "environment": machine(load_before),
            "scale": scale,
            "two_at_once": {
                "one_parser_one_job_seconds": single_seconds,
                "two_parsers_two_jobs_seconds": pair_seconds,
                "ratio": pair_seconds / single_seconds,
                "target": "about 1 on 2 CPUs (each parser has its own core)",
            },
        }
        print_report(report)
        write_results(args.results, report)
        return 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\n{'instances':>9} {'parse s':>8} {'s/1000':>7} {'peak MiB':>9} {'volume MiB':>11}"
        f" {'beyond volume':>14}"
    )
    for row in report["scale"].values():
        print(
            f"{row['instances']:>9} {row['median_parse_seconds']:>8.2f} "
            f"{row['seconds_per_1000']:>7.2f} {row['peak_rss_mib']:>9.0f} "
            f"{row['volume_mib']:>11.0f} {row['peak_beyond_volume_mib']:>14.0f}"
        )
    pair = report["two_at_once"]
    print(
        f"one parser, one job: {pair['one_parser_one_job_seconds']:.2f} s; two parsers, two "
        f"jobs at once: {pair['two_parsers_two_jobs_seconds']:.2f} s "
        f"(ratio {pair['ratio']:.2f}, {pair['target']})"
    )
    print(load_line(report["environment"]))


if __name__ == "__main__":
    sys.exit(main())
