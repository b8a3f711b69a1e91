"""The conformance report's own rules, without test data: every fidelity folder is listed,
and a row that does not pass needs an explanation."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import report
from .cases import Catalogue, Fidelity, FidelityCheck, Outcome, RunSpec, Status


def test_a_fidelity_folder_without_checks_gets_a_row(tmp_path: Path) -> None:
    (tmp_path / "fidelity" / "covered" / "In").mkdir(parents=True)
    (tmp_path / "fidelity" / "new_case" / "In").mkdir(parents=True)
    catalogue = Catalogue(tmp_path, runs=[RunSpec("fidelity/covered", tmp_path)])
    spec = Fidelity("ref.nii.gz", 1, "a reference")
    catalogue.checks.append(
        FidelityCheck("fidelity/covered", "covered-1", "fidelity/covered", tmp_path, spec)
    )
    rows = report.uncovered_fidelity_folders(catalogue)
    assert [(row.set_name, row.status) for row in rows] == [
        ("fidelity/new_case", Status.NO_REFERENCE)
    ]
    assert "no check covers this folder" in rows[0].detail


def test_a_difference_needs_an_explanation(monkeypatch: pytest.MonkeyPatch) -> None:
    differs = Outcome("fidelity/x", "ref.nii", "uid", Status.MISMATCH, "voxels differ")
    matches = Outcome("fidelity/x", "other.nii", "uid", Status.MATCH, "identical")
    skipped = Outcome("fidelity/x", "-", "uid", Status.NO_REFERENCE, "ours only")
    assert report.unexplained([differs, matches, skipped]) == [differs]
    monkeypatch.setitem(report.EXPLANATIONS, ("fidelity/x", "ref.nii"), "documented choice")
    assert report.unexplained([differs, matches, skipped]) == []
    text = report.render(Catalogue(Path()), [differs], [], 0.0)
    assert "Explained: documented choice" in text
