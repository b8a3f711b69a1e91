"""Conversion benchmark: ``seriesflow process`` against dcm2niix on the same CT series.

Run from the repository root:

    .venv/bin/python bench/bench_process.py [--runs 5] [--slices 300] [--size 512]

It writes one synthetic axial CT series (``shared.samples.write_ct_series``: files in
shuffled order, unsigned 12-bit with RescaleIntercept -1024), then times, interleaved and
after one uncounted warm-up each:

* ``seriesflow process --format nii``     against ``dcm2niix -z n`` (uncompressed NIfTI);
* ``seriesflow process --format nii.gz``  against ``dcm2niix -z y`` (pigz, when installed)
  and ``dcm2niix -z i`` (its internal single-threaded compressor).

Every run writes into a fresh, empty folder. Wall time is ``time.perf_counter`` around the
child process; peak memory is the child's ``ru_maxrss`` from ``os.wait4`` (including any
processes it waited for, such as pigz), taken by a bare launcher (``_common.launch``). Each
tool keeps its normal side outputs: seriesflow writes its metadata JSON files, dcm2niix its
BIDS sidecar, so both do the whole job a user asks of them. Results go to
``bench/results/process.json``. ``--formats nii`` times only the first pair (issue 10's
row; ``bench_all.py`` runs it so). Missing a target is a measurement, not a failure: the exit
status is 0 unless a command could not run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from _common import (
    MIB,
    RESULTS_DIR,
    Outcome,
    child_env,
    created,
    machine,
    run_child,
    seriesflow_command,
    tail,
    tool_version,
    verdict,
    warn_if_busy,
    write_results,
)

from shared.samples import write_ct_series

RESULTS = RESULTS_DIR / "process.json"
SPEED_TARGET = 1.5  # seriesflow median / dcm2niix median, uncompressed NIfTI (issue 10)
MEMORY_TARGET = 3.0  # seriesflow peak RSS <= MEMORY_TARGET x volume + MEMORY_SLACK_MIB
MEMORY_SLACK_MIB = 150.0
FORMATS = ("nii", "nii.gz")


@dataclass
class Variant:
    """One command to time. ``{out}`` in ``argv`` is replaced by the run's output folder."""

    key: str
    label: str
    tool: str
    argv: list[str]
    output_name: str  # the volume the run must leave in its output folder
    runs: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None

    def command(self, out: Path) -> list[str]:
        return [a.replace("{out}", str(out)) for a in self.argv]

    def seconds(self) -> list[float]:
        return [r["seconds"] for r in self.runs]

    def rss_mib(self) -> list[float]:
        return [r["max_rss_mib"] for r in self.runs]

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        if self.runs:
            data["median_seconds"] = statistics.median(self.seconds())
            data["min_seconds"] = min(self.seconds())
            data["median_max_rss_mib"] = statistics.median(self.rss_mib())
            data["peak_max_rss_mib"] = max(self.rss_mib())
        return data


def make_variants(seriesflow: list[str], dcm2niix: str, input_dir: Path, uid: str) -> list[Variant]:
    def sf(fmt: str) -> Variant:
        return Variant(
            key=f"seriesflow_{fmt.replace('.', '_')}",
            label=f"seriesflow process --format {fmt}",
            tool="seriesflow",
            argv=[
                *seriesflow,
                "process",
                "--input",
                str(input_dir),
                "--output",
                "{out}",
                "--format",
                fmt,
            ],
            output_name=f"{uid}.{fmt}",
        )

    def d2n(z: str, ext: str) -> Variant:
        return Variant(
            key=f"dcm2niix_z{z}",
            label=f"dcm2niix -z {z}",
            tool="dcm2niix",
            argv=[dcm2niix, "-z", z, "-f", "%j", "-o", "{out}", str(input_dir)],
            output_name=f"{uid}.{ext}",
        )

    return [sf("nii"), d2n("n", "nii"), sf("nii.gz"), d2n("y", "nii.gz"), d2n("i", "nii.gz")]


def measure(
    variant: Variant, work: Path, index: str, timeout: float, env: dict[str, str]
) -> tuple[Outcome, int] | None:
    """One run of ``variant`` into a fresh folder: the outcome and the volume's size in
    bytes; None (and ``variant.error``) on failure."""
    out = work / f"out-{variant.key}-{index}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = work / f"log-{variant.key}-{index}.txt"
    os.sync()  # the previous run's output is on disk before this one starts
    try:
        outcome = run_child(variant.command(out), log, timeout, env)
    except OSError as exc:
        variant.error = f"could not start {variant.command(out)[0]}: {exc}"
        return None
    volume = out / variant.output_name
    if outcome.returncode != 0 or not volume.is_file():
        found = sorted(p.name for p in out.iterdir())
        variant.error = (
            f"exit status {outcome.returncode}; expected {variant.output_name}, found {found}\n"
            + tail(log)
        )
        return None
    volume_bytes = volume.stat().st_size
    if index != "check":
        shutil.rmtree(out)
    return outcome, volume_bytes


def compare_volumes(a: Path, b: Path) -> dict[str, Any]:
    """Whether two NIfTI files hold the same voxel values at the same world positions."""
    import numpy as np

    sitk: Any = importlib.import_module("SimpleITK")  # untyped
    left = sitk.DICOMOrient(sitk.ReadImage(str(a)), "LPS")
    right = sitk.DICOMOrient(sitk.ReadImage(str(b)), "LPS")
    result: dict[str, Any] = {
        "size": [list(left.GetSize()), list(right.GetSize())],
        "pixel_types": [left.GetPixelIDTypeAsString(), right.GetPixelIDTypeAsString()],
        "same_size": left.GetSize() == right.GetSize(),
    }
    if result["same_size"]:
        geometry = [
            np.abs(np.subtract(getattr(left, f)(), getattr(right, f)())).max()
            for f in ("GetOrigin", "GetSpacing", "GetDirection")
        ]
        result["max_geometry_difference"] = float(max(geometry))
        difference = sitk.GetArrayViewFromImage(left).astype(np.float32)
        difference -= sitk.GetArrayViewFromImage(right).astype(np.float32)
        result["max_voxel_difference"] = float(np.abs(difference).max())
        result["agree"] = (
            result["max_geometry_difference"] < 1e-3 and result["max_voxel_difference"] < 0.5
        )
    else:
        result["agree"] = False
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs per command (>= 1)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--workdir", type=Path, help="where to put input and outputs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seriesflow", help="seriesflow command (default: .venv/bin/seriesflow)")
    parser.add_argument("--dcm2niix", default="dcm2niix")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=list(FORMATS),
        help="nii: seriesflow nii against dcm2niix -z n only (what issue 10's row is); "
        "nii.gz: also the compressed commands (default: both)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    dcm2niix = shutil.which(args.dcm2niix)
    if dcm2niix is None:
        print(f"error: {args.dcm2niix} not found (apt-get install dcm2niix)", file=sys.stderr)
        return 2
    seriesflow = seriesflow_command(args.seriesflow)
    env = child_env()

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="seriesflow-bench-", dir=args.workdir))
    try:
        input_dir = work / "input"
        start = time.perf_counter()
        files = write_ct_series(input_dir, slices=args.slices, size=args.size, seed=args.seed)
        generation = time.perf_counter() - start
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        volume_mib = args.slices * args.size * args.size * 2 / MIB
        input_mib = sum(f.stat().st_size for f in files) / MIB
        print(
            f"input: {len(files)} CT files, {args.size}x{args.size}x{args.slices}, "
            f"{input_mib:.0f} MiB on disk, volume {volume_mib:.0f} MiB, "
            f"generated in {generation:.2f} s"
        )

        load_before = warn_if_busy()
        variants = [
            v
            for v in make_variants(seriesflow, dcm2niix, input_dir, uid)
            if v.output_name.endswith(tuple(f".{f}" for f in args.formats))
        ]
        for v in variants:  # warm-up, not counted; a command that fails here is dropped
            if measure(v, work, "warmup", args.timeout, env) is None:
                print(f"error: {v.label} failed, not timed:\n{v.error}", file=sys.stderr)
        live = [v for v in variants if v.error is None]
        for r in range(args.runs):
            shift = r % len(live) if live else 0
            for v in live[shift:] + live[:shift]:  # interleaved, starting point rotates
                if v.error is not None:
                    continue
                measured = measure(v, work, str(r), args.timeout, env)
                if measured is None:
                    print(f"error: {v.label} failed in run {r + 1}:\n{v.error}", file=sys.stderr)
                    continue
                outcome, volume_bytes = measured
                v.runs.append(
                    {
                        "seconds": outcome.seconds,
                        "max_rss_mib": round(outcome.max_rss_mib, 1),
                        "rss_floor_mib": round(outcome.floor_mib, 1),
                        "volume_mib": round(volume_bytes / MIB, 1),
                    }
                )
            print(f"run {r + 1}/{args.runs} done", file=sys.stderr)

        by_key = {v.key: v for v in variants}
        check: dict[str, Any] | None = None
        sf_nii, d2n_nii = by_key["seriesflow_nii"], by_key["dcm2niix_zn"]
        if (
            sf_nii.error is None
            and d2n_nii.error is None
            and measure(sf_nii, work, "check", args.timeout, env) is not None
            and measure(d2n_nii, work, "check", args.timeout, env) is not None
        ):
            check = compare_volumes(
                work / f"out-{sf_nii.key}-check" / sf_nii.output_name,
                work / f"out-{d2n_nii.key}-check" / d2n_nii.output_name,
            )

        report = build_report(args, variants, volume_mib, input_mib, generation, check)
        report["environment"].update(machine(load_before))
        print_report(report, variants)
        write_results(args.results, report)
        return 1 if any(v.error for v in variants) else 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def ratio(a: Variant | None, b: Variant | None) -> float | None:
    if a is None or b is None or not a.runs or not b.runs:
        return None
    return statistics.median(a.seconds()) / statistics.median(b.seconds())


def build_report(
    args: argparse.Namespace,
    variants: list[Variant],
    volume_mib: float,
    input_mib: float,
    generation: float,
    check: dict[str, Any] | None,
) -> dict[str, Any]:
    by_key = {v.key: v for v in variants}
    speed = ratio(by_key["seriesflow_nii"], by_key["dcm2niix_zn"])
    sf_runs = by_key["seriesflow_nii"].runs
    gz = by_key.get("seriesflow_nii_gz")
    peak = max(r["max_rss_mib"] for r in sf_runs) if sf_runs else None
    return {
        "benchmark": "process",
        "created": created(),
        "parameters": {
            "runs": args.runs,
            "slices": args.slices,
            "size": args.size,
            "seed": args.seed,
            "volume_mib": round(volume_mib, 1),
            "input_mib": round(input_mib, 1),
            "generation_seconds": round(generation, 2),
        },
        "environment": {
            "dcm2niix": tool_version([shutil.which(args.dcm2niix) or "dcm2niix", "--version"]),
            "pigz": shutil.which("pigz"),
        },
        "variants": {v.key: v.summary() for v in variants},
        "ratios": {
            "nii": speed,
            "nii_gz_vs_dcm2niix_zy": ratio(gz, by_key.get("dcm2niix_zy")),
            "nii_gz_vs_dcm2niix_zi": ratio(gz, by_key.get("dcm2niix_zi")),
        },
        "targets": {
            "speed_nii": {
                "target": f"seriesflow/dcm2niix median <= {SPEED_TARGET}",
                "limit": SPEED_TARGET,
                "value": speed,
                "pass": None if speed is None else speed <= SPEED_TARGET,
            },
            "peak_memory_nii": {
                "target": f"seriesflow peak RSS <= {MEMORY_TARGET} x volume + "
                f"{MEMORY_SLACK_MIB:g} MiB",
                "value_mib": peak,
                "limit_mib": round(MEMORY_TARGET * volume_mib + MEMORY_SLACK_MIB, 1),
                "pass": None
                if peak is None
                else peak <= MEMORY_TARGET * volume_mib + MEMORY_SLACK_MIB,
            },
        },
        "output_check": check,
    }


def print_report(report: dict[str, Any], variants: list[Variant]) -> None:
    params = report["parameters"]
    print(
        f"\n{'command':<38} {'median s':>9} {'min s':>7} {'peak RSS MiB':>13} {'file MiB':>9}  runs"
    )
    for v in variants:
        if v.runs:
            print(
                f"{v.label:<38} {statistics.median(v.seconds()):>9.3f} {min(v.seconds()):>7.3f} "
                f"{max(v.rss_mib()):>13.0f} {v.runs[-1]['volume_mib']:>9.1f}  {len(v.runs)}"
            )
        else:
            print(f"{v.label:<38} {'FAILED':>9}")
    ratios = report["ratios"]
    for name, value in ratios.items():
        if value is not None:
            print(f"ratio seriesflow/dcm2niix ({name}): {value:.2f}")
    speed, memory = report["targets"]["speed_nii"], report["targets"]["peak_memory_nii"]
    value = "-" if speed["value"] is None else f"{speed['value']:.2f}"
    print(f"{verdict(speed['pass'])}  speed, nii: ratio {value} (target <= {SPEED_TARGET})")
    peak = "-" if memory["value_mib"] is None else f"{memory['value_mib']:.0f}"
    print(
        f"{verdict(memory['pass'])}  peak memory, nii: {peak} MiB for a "
        f"{params['volume_mib']:.0f} MiB volume (limit {memory['limit_mib']:.0f} MiB)"
    )
    check = report["output_check"]
    if check is not None:
        print(f"{'PASS' if check['agree'] else 'DIFF'}  seriesflow and dcm2niix volumes: {check}")
    if report["environment"]["pigz"]:
        print("note: dcm2niix -z y compresses with pigz (parallel); -z i is single-threaded")


if __name__ == "__main__":
    sys.exit(main())
