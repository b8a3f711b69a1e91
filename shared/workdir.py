"""Local work folders: where the parser keeps patient data while it works.

Every temporary folder of a service is made here, under the work directory
(``SERIESFLOW_WORK_DIR``; by default ``seriesflow`` in the system temporary folder),
readable by its owner only, and named after the process that owns it::

    seriesflow-<kind>-<host>.<pid>.<start>.<random>

``<start>`` is the process's start time (clock ticks since boot, from ``/proc``), so a
PID reused by a later process is not mistaken for the owner. A process that is killed
(SIGKILL, out of memory) cannot remove its folder; :func:`sweep_work_folders`, called when
the parser starts, removes every folder of this host whose owner no longer
runs, and keeps those of processes still running (replicas sharing the directory).

The work directory belongs to one host (or container): folders of other hosts are never
swept, because their processes cannot be seen from here.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.logs import get_logger

log = get_logger("workdir")
DEFAULT_NAME = "seriesflow"
_FOLDER = re.compile(r"^seriesflow-([a-z]+)-(.+)\.(\d+)\.(\d+)\.[^.]+$")
_HOST = re.compile(r"[^A-Za-z0-9-]")


def work_root(configured: Path | None) -> Path:
    """The work directory: ``configured``, else ``seriesflow`` in the system temp folder."""
    return configured if configured is not None else Path(tempfile.gettempdir()) / DEFAULT_NAME


def _host() -> str:
    return _HOST.sub("-", socket.gethostname())[:63] or "host"


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot); None if it does not run.

    0 where ``/proc`` is not available and the process exists (then only the PID counts).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner() -> str:
    pid = os.getpid()
    return f"{_host()}.{pid}.{_start_ticks(pid) or 0}"


def make_work_folder(kind: str, root: Path | None = None) -> Path:
    """A new empty folder (mode 0700) of this process for ``kind`` (``parser``, ``export``)."""
    base = work_root(root)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"seriesflow-{kind}-{_owner()}.", dir=base))


@contextmanager
def work_folder(kind: str, root: Path | None = None) -> Iterator[Path]:
    """:func:`make_work_folder`, removed with everything in it at the end of the block."""
    folder = make_work_folder(kind, root)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _abandoned(name: str, host: str) -> bool:
    match = _FOLDER.match(name)
    if match is None or match.group(2) != host:
        return False
    pid, start = int(match.group(3)), int(match.group(4))
    running = _start_ticks(pid)  # our own PID too: in a container, a previous life had it
    return running is None or (running != 0 and running != start)


def sweep_work_folders(root: Path | None = None) -> int:
    """Remove the work folders that killed processes of this host left; returns how many."""
    base = work_root(root)
    if not base.is_dir():
        return 0
    host = _host()
    removed = 0
    for entry in base.iterdir():
        if entry.is_dir() and not entry.is_symlink() and _abandoned(entry.name, host):
            shutil.rmtree(entry, ignore_errors=True)
            removed += not entry.exists()
    if removed:
        log.info("work folders of stopped processes removed", extra={"folders": removed})
    return removed
