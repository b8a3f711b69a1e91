"""No logging call in the project passes a reserved LogRecord attribute in ``extra``.

``logging`` raises ``KeyError`` for ``extra={"name": ...}`` (and ``msg``, ``module``...)
when the record is built, that is only at a level the logger has enabled: such a call
passes every test run at WARNING and fails every request in production at INFO.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from shared.logs import get_logger

ROOT = Path(__file__).resolve().parents[2]
RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def reserved_extra_keys(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg != "extra":
                continue
            value = keyword.value
            names: list[str] = []
            if isinstance(value, ast.Dict):
                names = [
                    k.value
                    for k in value.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)
                ]
            elif isinstance(value, ast.Call) and ast.unparse(value.func) == "dict":
                names = [k.arg for k in value.keywords if k.arg]
            found += [(node.lineno, n) for n in names if n in RESERVED]
    return found


def test_the_scan_finds_a_reserved_key() -> None:
    assert reserved_extra_keys('log.info("x", extra={"kind": 1, "name": 2})') == [(1, "name")]
    assert reserved_extra_keys('log.info("x", extra=dict(module=1))') == [(1, "module")]
    assert reserved_extra_keys('log.info("x", extra={"object_name": 2})') == []


def test_no_logging_call_passes_a_reserved_attribute() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: extra key {key!r}"
        for folder in ("shared", "services", "seriesflow")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, key in reserved_extra_keys(path.read_text())
    ]
    assert problems == []


def test_the_loggers_run_below_warning_in_tests() -> None:
    """tests/conftest.py enables every level, so a bad call raises in the tests too."""
    log = get_logger("test")
    assert log.isEnabledFor(logging.DEBUG)
    with pytest.raises(KeyError):
        log.info("x", extra={"name": "y"})


@pytest.mark.log_level("INFO")
def test_the_marker_sets_info() -> None:
    log = get_logger("test")
    assert log.isEnabledFor(logging.INFO)
    assert not log.isEnabledFor(logging.DEBUG)
