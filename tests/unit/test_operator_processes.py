"""Operator mode's second conversion process (shared.operator.processes)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.operator import processes
from shared.operator.parser import parse_folder
from shared.operator.processes import map_in_processes, shares
from shared.volumes.convert import ConversionOptions
from tests.conformance.cases import locate_testdata


@pytest.fixture(autouse=True)
def _two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on the machines this is for, whatever the test machine's CPUs."""
    monkeypatch.setattr(processes, "usable_cpus", lambda: 2)


def _children() -> set[int]:
    """This process's children, running or exited and not reaped (other tests' servers
    among them)."""
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


@pytest.fixture
def no_child_left() -> Iterator[None]:
    """The test leaves no child process of its own behind, not even an unreaped one."""
    before = _children()
    yield
    assert _children() <= before


def test_shares_are_balanced_heaviest_first() -> None:
    assert shares([150, 150, 150, 150, 2, 2, 2, 2]) == ([0, 2, 4, 6], [1, 3, 5, 7])
    assert shares([680]) == ([0], [])
    assert shares([10, 1, 1, 1]) == ([0], [1, 2, 3])
    assert shares([]) == ([], [])


@pytest.mark.usefixtures("no_child_left")
def test_results_come_back_in_order_from_two_processes() -> None:
    parent = os.getpid()
    calls: list[int] = []
    results = map_in_processes(
        list(range(8)),
        lambda n: (n * n, os.getpid()),
        weights=[5, 5, 5, 5, 1, 1, 1, 1],
        done=lambda: calls.append(1),
    )
    assert [square for square, _ in results] == [n * n for n in range(8)]
    workers = {pid for _, pid in results}
    assert parent in workers and len(workers) == 2  # a share was done elsewhere
    assert len(calls) == 8


@pytest.mark.parametrize("count", [1, 2])
def test_one_process_or_one_item_forks_nothing(count: int) -> None:
    parent = os.getpid()
    results = map_in_processes(list(range(count)), lambda n: os.getpid(), [1] * count, 1)
    assert results == [parent] * count
    results = map_in_processes([0], lambda n: os.getpid(), [1], 2)
    assert results == [parent]


@pytest.mark.usefixtures("no_child_left")
def test_a_failed_child_share_is_done_here(caplog: pytest.LogCaptureFixture) -> None:
    parent = os.getpid()

    def work(n: int) -> tuple[int, int]:
        if os.getpid() != parent:
            raise RuntimeError("disk full")
        return n + 1, os.getpid()

    with caplog.at_level(logging.WARNING, logger="seriesflow"):
        results = map_in_processes(list(range(6)), work, [1] * 6)
    assert results == [(n + 1, parent) for n in range(6)]
    assert "the second conversion process failed" in caplog.text


@pytest.mark.usefixtures("no_child_left")
def test_an_error_here_ends_the_child_and_is_raised() -> None:
    parent = os.getpid()

    def work(n: int) -> int:
        if os.getpid() == parent:
            raise ValueError("bad series")
        return n

    with pytest.raises(ValueError, match="bad series"):
        map_in_processes(list(range(4)), work, [1] * 4)


@pytest.mark.usefixtures("no_child_left")
def test_a_folder_converts_the_same_in_two_processes(tmp_path: Path) -> None:
    root = locate_testdata()
    if root is None:
        pytest.skip("../shared/testdata is not there")
    folder = root / "dcm_qa_nih" / "In"
    options = ConversionOptions(image_format="nii")
    documents = []
    for count in (1, 2):
        out = tmp_path / f"out{count}"
        documents.append(json.loads(parse_folder(folder, out, options, processes=count).to_json()))
    assert documents[0] == documents[1]
    assert sum(len(st["series"]) for st in documents[0]["studies"]) >= 4
    names = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out2").iterdir()) and names
    for name in names:
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def test_one_process_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.operator.settings import OperatorSettings

    monkeypatch.delenv("SERIESFLOW_PROCESSES", raising=False)
    assert OperatorSettings().processes == 1
    monkeypatch.setenv("SERIESFLOW_PROCESSES", "2")
    assert OperatorSettings().processes == 2
