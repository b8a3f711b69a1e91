"""The benchmarks' shared helpers (bench/_common.py) and bench_all's table, so the
benchmark code cannot rot unnoticed between the runs that use it. Fast: the only child
processes are a shell's ``true`` and one short Python allocation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import bench_all  # noqa: E402


def test_median_ratio_and_per_thousand() -> None:
    assert _common.median([3.0, 1.0, 2.0, 10.0, 4.0]) == 3.0
    assert _common.median([1.0, 2.0]) == 1.5
    assert _common.per_thousand(3.0, 1500) == pytest.approx(2.0)
    assert _common.ratio(1.0, 4.0) == 0.25
    assert _common.ratio(None, 4.0) is None
    assert _common.ratio(1.0, 0.0) is None


def test_verdicts() -> None:
    assert _common.verdict(_common.at_least(0.5, 0.5)) == "PASS"
    assert _common.verdict(_common.at_least(0.49, 0.5)) == "MISS"
    assert _common.verdict(_common.at_most(1.6, 1.5)) == "MISS"
    assert _common.verdict(_common.at_most(None, 1.5)) == "n/a"


def test_text_helpers() -> None:
    assert _common.listing([1.0, 2.345]) == "1.00, 2.35"
    assert _common.duration(45) == "45 s"
    assert _common.duration(600) == "10.0 min"
    environment = {"load_average_before_after": [0.3, 1.5], "cpus": 2}
    assert _common.load_line(environment) == "load average before/after: 0.3 / 1.5 on 2 CPUs"


def test_proc_status_fields() -> None:
    status = "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
    assert _common.status_field_mib(status, "VmHWM") == 200.0
    assert _common.status_field_mib(status, "VmRSS") == 100.0
    assert _common.status_field_mib(status, "VmSwap") is None
    assert _common.memory_mib("MemTotal:       24684544 kB\n") == pytest.approx(24106, abs=1)


def test_table_columns_line_up() -> None:
    lines = _common.table(["a", "long header"], [["wide cell", "x"], ["y", "z"]])
    assert lines[0] == "| a         | long header |"
    assert lines[1] == "|-----------|-------------|"
    assert lines[2] == "| wide cell | x           |"
    assert len({len(line) for line in lines}) == 1


def test_launcher_output_is_parsed_and_a_broken_one_refused(tmp_path: Path) -> None:
    outcome = _common.parse_launcher_output("1.5 20480 10240 3\n", tmp_path / "log")
    assert (outcome.seconds, outcome.max_rss_mib, outcome.floor_mib) == (1.5, 20.0, 10.0)
    assert outcome.returncode == 3
    with pytest.raises(OSError, match="launcher failed"):
        _common.parse_launcher_output("Traceback ...", tmp_path / "log")


def test_run_child_reports_the_childs_own_peak_memory(tmp_path: Path) -> None:
    env = _common.child_env()
    small = _common.run_child(["true"], tmp_path / "true.log", 30, env)
    assert small.returncode == 0
    assert small.max_rss_mib < 50  # not the test process's own high-water mark
    allocate = "b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    big = _common.run_child(
        [sys.executable, "-I", "-S", "-c", allocate], tmp_path / "big.log", 30, env
    )
    assert big.returncode == 0
    assert big.max_rss_mib >= 80
    failed = _common.run_child(["sh", "-c", "echo oops; exit 3"], tmp_path / "f.log", 30, env)
    assert failed.returncode == 3
    assert "oops" in _common.tail(tmp_path / "f.log")


def test_child_env_drops_clara_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_CLARA_NOSYNC", "1")
    monkeypatch.setenv("SERIESFLOW_TEST_KEEP", "1")
    env = _common.child_env()
    assert "NVIDIA_CLARA_NOSYNC" not in env
    assert env["SERIESFLOW_TEST_KEEP"] == "1"


def test_bench_all_rows_from_results_and_a_missing_result() -> None:
    process = {
        "parameters": {"slices": 300, "size": 512, "volume_mib": 150.0},
        "variants": {
            "seriesflow_nii": {"median_seconds": 2.8, "peak_max_rss_mib": 375.0},
            "dcm2niix_zn": {"median_seconds": 0.56, "peak_max_rss_mib": 161.0},
        },
        "targets": {
            "speed_nii": {"limit": 1.5, "value": 5.0, "pass": False},
            "peak_memory_nii": {"value_mib": 375.0, "limit_mib": 600.0, "pass": True},
        },
    }
    rows = bench_all.build_rows({"process": process}, ["process", "export"])
    export, speed, memory = rows  # in the order
    assert speed.cells() == [
        "`seriesflow process --format nii`, whole process, 300 x 512² CT",
        "2.80 s",
        "dcm2niix -z n: 0.56 s",
        "5.0",
        "<= 1.5",
        "MISS",
    ]
    assert (memory.seriesflow, memory.verdict) == ("375 MiB", "PASS")
    assert export.seriesflow == "no result"  # the export benchmark did not run or failed
    assert export.verdict.startswith("n/a")


def test_bench_all_latency_rows_give_the_cpu_floor_when_measured() -> None:
    latency = {
        "median_seconds": 2.1,
        "target_seconds": 1.5,
        "stage_median_seconds": {"receiver": 0.03, "parser": 2.05, "selector": 0.02},
    }
    (row,) = bench_all.build_rows({"service": {"latency": latency}}, ["latency"])
    assert (row.seriesflow, row.verdict) == (
        "2.10 s (receiver 0.03, parser 2.05, selector 0.02)",
        "MISS",
    )
    latency["cpu_floor_median_seconds"] = 1.6
    latency["cpu_after_release_median_seconds"] = {"parser": 1.2, "object store": 2.0}
    latency_row, floor = bench_all.build_rows({"service": {"latency": latency}}, ["latency"])
    assert latency_row == row
    assert floor.seriesflow == "1.60 s (parser 1.20, object store 2.00 CPU s)"
    assert floor.target == "(information)"


def test_bench_all_jobs_cover_every_row() -> None:
    covered = {row for job in bench_all.JOBS for row in job.rows}
    assert covered == set(bench_all.ROWS)


def test_bench_all_expected_duration_scales_the_last_measured_one() -> None:
    args = argparse.Namespace(runs=5, quick=False, only=list(bench_all.ROWS), scale_runs=1)
    process = next(job for job in bench_all.JOBS if job.name == "process")
    key = bench_all.job_key(process, args)
    assert key == "process --formats nii"  # the number of runs is not part of the key
    assert bench_all.expected_seconds(process, args, {}) == process.estimate(args)
    one_run = argparse.Namespace(**{**vars(args), "runs": 1})
    measured = {key: {"runs": 1, "seconds": 3 * process.estimate(one_run)}}
    assert bench_all.expected_seconds(process, args, measured) == pytest.approx(
        3 * process.estimate(args)
    )


def test_machine_probes_measure_and_leave_nothing_behind(tmp_path: Path) -> None:
    probes = _common.machine_probes(tmp_path)
    assert set(probes) == {"create_ms", "fresh_memory_ms_per_mib", "touched_memory_ms_per_mib"}
    assert all(value > 0 for value in probes.values())
    assert list(tmp_path.iterdir()) == []  # its files and folders removed
    line = _common.probes_line(probes)
    assert f"{probes['create_ms']:.2f} ms" in line
    assert f"{probes['fresh_memory_ms_per_mib']:.2f} ms/MiB" in line
