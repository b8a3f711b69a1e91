"""seriesflow against the real DICOM test data and its reference volumes.

What is checked, and how references are matched, is in ``cases.py``; how two volumes are
compared is in ``compare.py``. Every seriesflow run happens once per session, in parallel,
and only the runs that the selected tests need are started. ``python -m
tests.conformance.report`` runs the same checks and writes ``docs/conformance.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .cases import (
    Check,
    CrossCheck,
    Outcome,
    ReferenceCheck,
    RefusalCheck,
    RunStore,
    SidecarCheck,
    build_catalogue,
    locate_testdata,
    unexpected_unreferenced,
)

pytestmark = pytest.mark.conformance

ROOT = locate_testdata()
if not ROOT.is_dir():
    pytest.skip(f"test data not found at {ROOT} (set SERIESFLOW_TESTDATA)", allow_module_level=True)

CATALOGUE = build_catalogue(ROOT)


def _checks(kind: type[Any], set_prefix: str) -> list[Any]:
    return [
        pytest.param(check, id=check.check_id)
        for check in CATALOGUE.checks_of(kind)
        if check.set_name.startswith(set_prefix)
    ]


@pytest.fixture(scope="session")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunStore]:
    """seriesflow's results, one run per input; the runs the session needs start at once."""
    store = RunStore(CATALOGUE.runs, tmp_path_factory.mktemp("seriesflow-conformance"))
    needed: list[str] = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        for value in callspec.params.values() if callspec is not None else ():
            if isinstance(value, ReferenceCheck | SidecarCheck | CrossCheck | RefusalCheck):
                needed.extend(value.runs)
            elif isinstance(value, str) and value in CATALOGUE.run_names():
                needed.append(value)
    store.start(dict.fromkeys(needed))
    yield store
    store.close()


def _assert_outcome(outcome: Outcome) -> None:
    if outcome.skipped:
        pytest.skip(f"{outcome.status}: {outcome.detail}")
    assert outcome.passed, (
        f"{outcome.set_name} {outcome.reference} (ours: {outcome.ours}): "
        f"{outcome.status}: {outcome.detail}"
    )


def _evaluate(check: Check, runs: RunStore) -> None:
    _assert_outcome(check.evaluate(runs))


# -- every run -------------------------------------------------------------------------


@pytest.mark.parametrize("run_name", CATALOGUE.run_names())
def test_run_writes_consistent_outputs(run_name: str, runs: RunStore) -> None:
    """Exit status 0 (or 3, partial, with something skipped or not converted), a valid
    dicom-metadata.json, series-images.json agreeing with it, every image file written."""
    result = runs.get(run_name)
    assert result.ok, f"{run_name}: {result.describe_failure()}"


# -- dcm_qa_ts -------------------------------------------------------------------------


@pytest.mark.parametrize("check", _checks(ReferenceCheck, "dcm_qa_ts"))
def test_dcm_qa_ts_matches_reference(check: ReferenceCheck, runs: RunStore) -> None:
    _evaluate(check, runs)


@pytest.mark.parametrize("check", _checks(CrossCheck, "dcm_qa_ts"))
def test_dcm_qa_ts_transfer_syntaxes_decode_alike(check: CrossCheck, runs: RunStore) -> None:
    _evaluate(check, runs)


# -- dcm_qa_enh, dcm_qa_nih --------------------------------------------------------------


@pytest.mark.parametrize("check", _checks(SidecarCheck, "dcm_qa_enh"))
def test_dcm_qa_enh_matches_reference(check: SidecarCheck, runs: RunStore) -> None:
    _evaluate(check, runs)


@pytest.mark.parametrize("check", _checks(SidecarCheck, "dcm_qa_nih"))
def test_dcm_qa_nih_matches_reference(check: SidecarCheck, runs: RunStore) -> None:
    _evaluate(check, runs)


@pytest.mark.parametrize(
    "run_name", [n for n in ("dcm_qa_enh", "dcm_qa_nih") if n in CATALOGUE.run_names()]
)
def test_volumes_without_reference_are_expected(run_name: str, runs: RunStore) -> None:
    """Every volume of the run matches a reference, or is listed with its reason in
    ``cases.EXPECTED_UNREFERENCED``; and every entry listed there is still needed."""
    result = runs.get(run_name)
    assert result.ok, result.describe_failure()
    unexpected, stale = unexpected_unreferenced(CATALOGUE, runs, run_name)
    assert not unexpected, f"{run_name}: volumes with no reference: " + "; ".join(unexpected)
    assert not stale, f"{run_name}: EXPECTED_UNREFERENCED entries not needed: " + "; ".join(stale)


# -- dicom2nifti -------------------------------------------------------------------------


@pytest.mark.parametrize("check", _checks(ReferenceCheck, "dicom2nifti/"))
def test_dicom2nifti_matches_ground_truth(check: ReferenceCheck, runs: RunStore) -> None:
    _evaluate(check, runs)


@pytest.mark.parametrize("check", _checks(CrossCheck, "dicom2nifti/generic"))
def test_dicom2nifti_compressed_variants_decode_alike(check: CrossCheck, runs: RunStore) -> None:
    _evaluate(check, runs)


@pytest.mark.parametrize("check", _checks(RefusalCheck, "dicom2nifti/failing"))
def test_dicom2nifti_failing_series_are_refused(check: RefusalCheck, runs: RunStore) -> None:
    """Refused with the expected code, or resampled to match a resampling reference; never a
    silently stacked volume."""
    _evaluate(check, runs)
