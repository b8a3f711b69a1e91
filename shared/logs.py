"""Structured logs: one JSON object per line, carrying the job and correlation IDs.

Messages and their fields must not carry patient identifiers: log UIDs, counts, codes and
reasons, never names, IDs or dates of patients, nor file paths (which often contain
them). ``SERIESFLOW_LOG_PHI=1`` is the operator's switch for the rare case where paths
are needed to debug; code checks :func:`phi_allowed` before logging one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_PHI_FLAG = "seriesflow_log_phi"


@contextmanager
def job_context(job_id: str, correlation_id: str | None = None) -> Iterator[None]:
    """Every record logged inside carries these IDs."""
    job_token = _job_id.set(job_id)
    corr_token = _correlation_id.set(correlation_id or job_id)
    try:
        yield
    finally:
        _job_id.reset(job_token)
        _correlation_id.reset(corr_token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (job := _job_id.get()) is not None:
            entry["job_id"] = job
            entry["correlation_id"] = _correlation_id.get()
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(
    level: str = "INFO", log_dir: Path | None = None, stream: bool = False, phi: bool = False
) -> None:
    """Send seriesflow's logs as JSON lines to ``log_dir/seriesflow.log`` and/or stderr."""
    root = logging.getLogger("seriesflow")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    setattr(root, _PHI_FLAG, phi)
    formatter = JsonFormatter()
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_dir / "seriesflow.log")
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if stream:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """A logger below ``seriesflow`` (configured by :func:`configure_logging`)."""
    return logging.getLogger(f"seriesflow.{name}")


def phi_allowed() -> bool:
    return bool(getattr(logging.getLogger("seriesflow"), _PHI_FLAG, False))
