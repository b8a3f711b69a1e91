"""What the benchmarks in bench/ share: timing a child process and its peak memory, medians,
verdicts, the machine and its load average, tables and result files.

Only the standard library is imported here, so the pure helpers can be tested (and
``bench_all.py`` started) without the services' dependencies. The benchmark scripts are run
from the repository root as ``.venv/bin/python bench/NAME.py``; their own folder is on
``sys.path``, so they ``import _common``.
"""

from __future__ import annotations

import json
import mmap
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
MIB = 1024 * 1024


# --- figures ---------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (at least one)."""
    return statistics.median(list(values))


def per_thousand(seconds: float, count: int) -> float:
    """Seconds per 1,000 items: about the same at every count when time is linear."""
    return seconds / count * 1000


def ratio(value: float | None, peer: float | None) -> float | None:
    """``value / peer``, or None when either is missing or the peer is 0."""
    if value is None or peer is None or peer == 0:
        return None
    return value / peer


def duration(seconds: float) -> str:
    """``45 s`` under two minutes, else ``3.5 min``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def listing(values: Iterable[float], digits: int = 2) -> str:
    """``1.00, 2.50``: each run's figure, for a line of output."""
    return ", ".join(f"{v:.{digits}f}" for v in values)


def verdict(ok: bool | None) -> str:
    """PASS, MISS, or n/a when there was nothing to judge."""
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def at_most(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


# --- the machine -----------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def warn_if_busy(load: float | None = None) -> float:
    """Warns on stderr when other work competes for the CPUs; returns the load average."""
    load = load_average() if load is None else load
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(
            f"warning: load average {load:.2f} on {cpus} CPUs: other processes compete, "
            "timings will be noisy",
            file=sys.stderr,
        )
    return load


def memory_mib(meminfo: str | None = None) -> float | None:
    """The machine's memory (MemTotal), MiB; None where /proc/meminfo is not there."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    return status_field_mib(meminfo, "MemTotal")


def machine(load_before: float) -> dict[str, Any]:
    """The machine, and the load average before the run (given) and now."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_mib": memory_mib(),
        "python": platform.python_version(),
        "load_average_before_after": [round(load_before, 2), round(load_average(), 2)],
    }


PROBE_FILES = 300
PROBE_FILE_BYTES = 8192
PROBE_MEMORY_MIB = 64
DELETED_AGO_SECONDS = 1.1  # ext4 counts a deletion as recent from the next second


def machine_probes(folder: Path | None = None) -> dict[str, float]:
    """Two costs of this machine that move the service and peer figures from day to day.

    * ``create_ms``: creating, writing and closing one file of 8 KiB in ``folder`` (the
      system temporary folder, where the services' work and spool folders and the peers'
      output folders are), a second after as many files were deleted there, as the next
      job does. Every instance received, spooled, downloaded or stored by storescp is one.
      On ext4 without a journal a new inode skips those deleted in the last minutes
      (``recently_deleted``, from the second after), so this grows with the files the
      runs delete: it is measured before and after them.
    * ``fresh_memory_ms_per_mib``: the first write to memory just mapped (page faults;
      dear in some virtual machines), and ``touched_memory_ms_per_mib`` the same write
      again. Every new file's page cache and every new buffer pays the first.
    """
    data = b"\x01" * PROBE_FILE_BYTES
    with tempfile.TemporaryDirectory(prefix="seriesflow-probe-", dir=folder) as root:
        seconds = 0.0
        for batch in range(2):  # the first batch is deleted; the second is timed
            path = Path(root) / str(batch)
            path.mkdir()
            started = time.perf_counter()
            for n in range(PROBE_FILES):
                (path / f"{n}.dcm").write_bytes(data)
            seconds = time.perf_counter() - started
            if batch == 0:
                shutil.rmtree(path)
                time.sleep(DELETED_AGO_SECONDS)
    size = PROBE_MEMORY_MIB * MIB
    block = b"\x01" * size
    memory = mmap.mmap(-1, size)
    try:
        touches = []
        for _ in range(2):
            started = time.perf_counter()
            memory[:] = block
            touches.append(time.perf_counter() - started)
    finally:
        memory.close()
    return {
        "create_ms": round(seconds / PROBE_FILES * 1000, 3),
        "fresh_memory_ms_per_mib": round(touches[0] / PROBE_MEMORY_MIB * 1000, 3),
        "touched_memory_ms_per_mib": round(touches[1] / PROBE_MEMORY_MIB * 1000, 3),
    }


def probes_line(probes: dict[str, float]) -> str:
    """The probes of :func:`machine_probes` in words."""
    return (
        f"creating an 8 KiB file in the temporary folder {probes['create_ms']:.2f} ms; "
        f"writing fresh memory {probes['fresh_memory_ms_per_mib']:.2f} ms/MiB "
        f"(again: {probes['touched_memory_ms_per_mib']:.2f})"
    )


def load_line(environment: dict[str, Any]) -> str:
    """``load average before/after: A / B on N CPUs`` from :func:`machine`'s record."""
    before, after = environment["load_average_before_after"]
    return f"load average before/after: {before} / {after} on {environment['cpus']} CPUs"


def status_field_mib(status: str, field: str) -> float | None:
    """A ``NAME: N kB`` field of /proc/PID/status or /proc/meminfo text, in MiB."""
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def process_mib(pid: int, field: str = "VmHWM") -> float | None:
    """A running process's memory figure (VmHWM: its peak RSS; VmRSS: now), MiB; None once
    it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return status_field_mib(status, field)


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a running process has used so far; None once it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- results ---------------------------------------------------------------------------


def write_results(path: Path, report: dict[str, Any]) -> None:
    """Writes ``report`` as JSON to ``path`` (its folder created) and says where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {path}")


def created() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table whose columns line up in a terminal too."""
    body = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [
        line(body[0]),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *map(line, body[1:]),
    ]


# --- commands --------------------------------------------------------------------------


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, indented; empty when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def seriesflow_command(explicit: str | None = None) -> list[str]:
    """The seriesflow command: ``explicit`` split, else the virtualenv's script."""
    if explicit:
        return shlex.split(explicit)
    script = Path(sys.executable).parent / "seriesflow"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "seriesflow"]


def child_env() -> dict[str, str]:
    """The environment, without Clara variables that would change what seriesflow does."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_CLARA_")}


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[-1] if text else f"exit {done.returncode}"


@dataclass
class Outcome:
    """One child process run by the launcher."""

    seconds: float
    max_rss_mib: float
    floor_mib: float  # the launcher's own RSS: no child can report less
    returncode: int
    log: Path


# Runs one command and reports its wall time and peak RSS. It runs in a bare interpreter
# (``-I -S``, stdlib only) because a child's ru_maxrss starts from the high-water mark of
# the process that forked it: forked from a benchmark (numpy, pydicom, generated data),
# even ``true`` would report the benchmark's own peak. From the launcher, the floor is the
# launcher's ~10 MiB, which is reported with each run. ru_maxrss from os.wait4 includes
# the processes the child waited for (pigz under dcm2niix).
_LAUNCHER = r"""
import os, resource, signal, sys, time
timeout, log, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"cannot run {argv[0]}: {exc}\n".encode())
    os._exit(127)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
signal.setitimer(signal.ITIMER_REAL, 0)
print(seconds, usage.ru_maxrss, floor, os.waitstatus_to_exitcode(status))
"""


def launch(
    argv: list[str], log: Path, timeout: float, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Starts ``argv`` under the launcher (its output to ``log``); see :func:`collect`."""
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(timeout), str(log), *argv]
    return subprocess.Popen(launcher, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)


def parse_launcher_output(stdout: str, log: Path) -> Outcome:
    """The launcher's line: seconds, ru_maxrss KiB, its own KiB, exit status."""
    try:
        seconds, rss_kib, floor_kib, returncode = stdout.split()
        return Outcome(
            seconds=float(seconds),
            max_rss_mib=int(rss_kib) * 1024 / MIB,  # Linux reports ru_maxrss in KiB
            floor_mib=int(floor_kib) * 1024 / MIB,
            returncode=int(returncode),
            log=log,
        )
    except ValueError:
        raise OSError(f"benchmark launcher failed: {stdout!r}\n{tail(log)}") from None


def collect(process: subprocess.Popen[str], log: Path) -> Outcome:
    """Waits for a :func:`launch` ed command: its wall time, peak RSS and exit status."""
    stdout, _ = process.communicate()
    return parse_launcher_output(stdout, log)


def run_child(argv: list[str], log: Path, timeout: float, env: dict[str, str]) -> Outcome:
    """Runs ``argv`` to completion, with its wall time and its own peak RSS."""
    return collect(launch(argv, log, timeout, env), log)
