"""Operator mode on real multi-series folders: ``seriesflow process`` against dcm2niix.

Run from the repository root:

    .venv/bin/python bench/bench_folders.py [--runs 5] [--testdata ../shared/testdata]

Folders (real scanner data from ``SERIESFLOW_TESTDATA``, see its README.md): the GE and
Siemens study of ``dcm_qa_nih``, the GE ``epi_pepolar`` study of ``fidelity/dcm_qa_polar``,
Philips' ``fidelity/dcm_qa_philips_vanderbilt``, and ``combined``: the three copied into one
folder (about 2,260 files, 3 studies), as an operator would get a day's export.

For each folder it times, interleaved and after one uncounted warm-up each,
``seriesflow process --format nii`` against ``dcm2niix -z n`` (uncompressed NIfTI and its
BIDS sidecar), each into a fresh folder, and records the median wall time and each
process's peak RSS (the same bare launcher as ``bench_process.py``). Targets (issue 10):

* time: seriesflow median / dcm2niix median at most 3;
* peak memory: at most 3x the largest volume seriesflow wrote + 150 MiB, whatever the
  number of series and files.

Results go to ``bench/results/folders.json``. A missed target is a measurement, not a
failure: the exit status is 0 unless a command could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as common
from _common import MIB, REPO, RESULTS_DIR, verdict

RESULTS = RESULTS_DIR / "folders.json"
SPEED_TARGET = 3.0  # seriesflow median / dcm2niix median
MEMORY_FACTOR = 3.0  # peak RSS <= MEMORY_FACTOR x largest volume + MEMORY_SLACK_MIB
MEMORY_SLACK_MIB = 150.0
FOLDERS = {
    "dcm_qa_nih": "dcm_qa_nih/In",
    "dcm_qa_polar": "fidelity/dcm_qa_polar/In",
    "dcm_qa_philips_vanderbilt": "fidelity/dcm_qa_philips_vanderbilt/In",
}


def testdata_root(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    return Path(os.environ.get("SERIESFLOW_TESTDATA", REPO.parent / "shared" / "testdata"))


def file_count(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def make_combined(sources: list[Path], target: Path) -> None:
    """Copy every source folder below ``target`` (seriesflow does not follow links)."""
    for source in sources:
        shutil.copytree(source, target / source.parent.name)


def largest_volume_mib(out: Path) -> float:
    """The largest volume written, in MiB (its file less the NIfTI-1 header)."""
    sizes = [p.stat().st_size - 352 for p in out.glob("*.nii")]
    return max(sizes, default=0) / MIB


def one_run(
    argv: list[str], out: Path, log: Path, timeout: float, env: dict[str, str]
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    outcome = common.run_child(argv, log, timeout, env)
    volumes = list(out.glob("*.nii"))
    result: dict[str, Any] = {
        "seconds": outcome.seconds,
        "max_rss_mib": round(outcome.max_rss_mib, 1),
        "rss_floor_mib": round(outcome.floor_mib, 1),
        "returncode": outcome.returncode,
        "volumes": len(volumes),
        "largest_volume_mib": round(largest_volume_mib(out), 2),
    }
    # seriesflow exits 3 when it found (and recorded) damaged DICOM data: still a full run
    if outcome.returncode not in (0, 3) or not volumes:
        result["error"] = (
            f"exit status {outcome.returncode}, {len(volumes)} volumes\n" + common.tail(log)
        )
    return result


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    return {
        "runs": runs,
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "peak_max_rss_mib": max(r["max_rss_mib"] for r in runs),
        "median_max_rss_mib": statistics.median(r["max_rss_mib"] for r in runs),
        "volumes": runs[-1]["volumes"],
        "largest_volume_mib": runs[-1]["largest_volume_mib"],
    }


def bench_folder(
    name: str,
    folder: Path,
    work: Path,
    runs: int,
    timeout: float,
    seriesflow: list[str],
    dcm2niix: str,
    env: dict[str, str],
) -> dict[str, Any]:
    commands = {
        "seriesflow": [
            *seriesflow,
            "process",
            "-q",
            "--input",
            str(folder),
            "--output",
            "{out}",
            "--format",
            "nii",
        ],
        "dcm2niix": [dcm2niix, "-z", "n", "-o", "{out}", str(folder)],
    }
    measured: dict[str, list[dict[str, Any]]] = {tool: [] for tool in commands}
    order = list(commands)
    for r in range(-1, runs):  # run -1 is the warm-up
        for tool in order if r % 2 == 0 else order[::-1]:
            out = work / f"out-{name}-{tool}"
            argv = [a.replace("{out}", str(out)) for a in commands[tool]]
            result = one_run(argv, out, work / f"log-{name}-{tool}.txt", timeout, env)
            if "error" in result:
                return {"error": f"{tool}: {result['error']}"}
            if r >= 0:
                measured[tool].append(result)
        print(
            f"  {name}: run {r + 1}/{runs} done" if r >= 0 else f"  {name}: warm-up done",
            file=sys.stderr,
        )
    sf, d2n = summarise(measured["seriesflow"]), summarise(measured["dcm2niix"])
    ratio = sf["median_seconds"] / d2n["median_seconds"]
    limit = MEMORY_FACTOR * sf["largest_volume_mib"] + MEMORY_SLACK_MIB
    return {
        "files": file_count(folder),
        "seriesflow": sf,
        "dcm2niix": d2n,
        "ratio": ratio,
        "speed_pass": ratio <= SPEED_TARGET,
        "memory_limit_mib": round(limit, 1),
        "memory_ratio_to_dcm2niix": sf["peak_max_rss_mib"] / d2n["peak_max_rss_mib"],
        "memory_pass": sf["peak_max_rss_mib"] <= limit,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\n{'folder':<26} {'files':>5} {'sf s':>7} {'d2n s':>7} {'ratio':>6} {'target':>6}"
        f" {'sf MiB':>7} {'d2n MiB':>7} {'limit':>6}  time  memory"
    )
    for name, row in report["folders"].items():
        if "error" in row:
            print(f"{name:<26} FAILED: {row['error']}")
            continue
        sf, d2n = row["seriesflow"], row["dcm2niix"]
        print(
            f"{name:<26} {row['files']:>5} {sf['median_seconds']:>7.2f} "
            f"{d2n['median_seconds']:>7.2f} {row['ratio']:>6.1f} {SPEED_TARGET:>6.1f} "
            f"{sf['peak_max_rss_mib']:>7.0f} {d2n['peak_max_rss_mib']:>7.0f} "
            f"{row['memory_limit_mib']:>6.0f}  {verdict(row['speed_pass'])}  "
            f"{verdict(row['memory_pass'])}"
        )
    print(
        f"time: medians of {report['parameters']['runs']} interleaved runs; target "
        f"seriesflow/dcm2niix <= {SPEED_TARGET}. memory: peak RSS over the runs; limit "
        f"{MEMORY_FACTOR:g} x the largest volume + {MEMORY_SLACK_MIB:g} MiB"
    )
    print(common.load_line(report["environment"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs per command (>= 1)")
    parser.add_argument("--testdata", type=Path, help="default: $SERIESFLOW_TESTDATA")
    parser.add_argument(
        "--folders",
        nargs="*",
        default=[*FOLDERS, "combined"],
        help=f"which of {', '.join(FOLDERS)}, combined",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--workdir", type=Path, help="where outputs go")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seriesflow", help="seriesflow command (default: .venv/bin/seriesflow)")
    parser.add_argument("--dcm2niix", default="dcm2niix")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    dcm2niix = shutil.which(args.dcm2niix)
    if dcm2niix is None:
        print(f"error: {args.dcm2niix} not found (apt-get install dcm2niix)", file=sys.stderr)
        return 2
    root = testdata_root(args.testdata)
    sources = {name: root / rel for name, rel in FOLDERS.items()}
    missing = [str(p) for p in sources.values() if not p.is_dir()]
    if missing:
        print(f"error: test data not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-folders-", dir=args.workdir))
    seriesflow = common.seriesflow_command(args.seriesflow)
    env = common.child_env()
    load_before = common.warn_if_busy()
    try:
        folders: dict[str, Path] = {}
        for name in args.folders:
            if name == "combined":
                folders[name] = work / "combined"
                make_combined(list(sources.values()), folders[name])
            elif name in sources:
                folders[name] = sources[name]
            else:
                parser.error(f"unknown folder {name!r}")
        results = {
            name: bench_folder(
                name, folder, work, args.runs, args.timeout, seriesflow, dcm2niix, env
            )
            for name, folder in folders.items()
        }
        report = {
            "benchmark": "folders",
            "created": common.created(),
            "parameters": {"runs": args.runs, "testdata": str(root)},
            "targets": {
                "speed": f"seriesflow/dcm2niix median <= {SPEED_TARGET}",
                "speed_limit": SPEED_TARGET,
                "memory": f"peak RSS <= {MEMORY_FACTOR:g} x largest volume + "
                f"{MEMORY_SLACK_MIB:g} MiB",
            },
            "environment": {
                "dcm2niix": common.tool_version([dcm2niix, "--version"]),
                **common.machine(load_before),
            },
            "folders": results,
        }
        print_report(report)
        common.write_results(args.results, report)
        return 1 if any("error" in row for row in results.values()) else 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
