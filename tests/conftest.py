"""Every test runs seriesflow's loggers for real, so a logging call that raises cannot hide.

(Also: the whole session gets an ``XDG_STATE_HOME`` of its own, so the receivers that tests
start, in process or as processes, keep their default spool there and never in the user's
``~/.local/state``; it is removed when the session ends.)

Without this, the ``seriesflow`` loggers inherit the root logger's WARNING level and an
``info()`` or ``debug()`` call never builds its record: a call that passes a reserved
LogRecord attribute in ``extra`` (``name``, ``msg``, ``module``...) raises ``KeyError`` only
in production, at INFO. Here every test runs with the loggers at DEBUG (which builds the
records of every level), or at the level a ``@pytest.mark.log_level("INFO")`` marker
names, and every record is formatted by the production :class:`JsonFormatter`; a record
that cannot be built or formatted fails the test.
"""

from __future__ import annotations

import seriesflow.lazy_imports  # noqa: F401  (first: pydicom as the command imports it)

# isort: split
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from shared.logs import JsonFormatter

# Speed is never a timed assertion in a test: hypothesis's per-example deadline is one, and
# it fails property tests on a loaded machine. The properties themselves stay as they are.
hypothesis_settings.register_profile("seriesflow", deadline=None)
hypothesis_settings.load_profile("seriesflow")


class RaisingJsonHandler(logging.Handler):
    """Formats each record as production does and lets any error propagate."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)
        self.records.append(record)


_STATE_HOME = "_seriesflow_tests_state_home"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "log_level(level): run seriesflow's loggers at this level (default DEBUG)"
    )
    state = tempfile.mkdtemp(prefix="seriesflow-tests-state-")
    setattr(config, _STATE_HOME, state)
    os.environ["XDG_STATE_HOME"] = state


def pytest_unconfigure(config: pytest.Config) -> None:
    state = getattr(config, _STATE_HOME, None)
    if state is not None:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(autouse=True)
def seriesflow_logging(request: pytest.FixtureRequest) -> Iterator[RaisingJsonHandler]:
    marker = request.node.get_closest_marker("log_level")
    level = str(marker.args[0]).upper() if marker else "DEBUG"
    root = logging.getLogger("seriesflow")
    saved = (root.level, list(root.handlers), root.propagate)
    handler = RaisingJsonHandler()
    root.setLevel(level)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        root.propagate = saved[2]
