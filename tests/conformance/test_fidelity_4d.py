"""seriesflow against dcm2niix on the ``fidelity/`` folders of kinds, polarity, timing, scaling.

Each check (``cases.FIDELITY``) finds the one volume that *is* a dcm2niix reference by what
the metadata says it is (SeriesNumber, ``imageKind``, ``phaseEncodingPolarity``), and
compares it voxel for voxel, affine and 4th-axis spacing included. The runs are
``seriesflow process --format nii`` on each folder, and ``--scaling precise`` for the
Philips ones (``dcm_qa_enh``'s B0 map included).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nibabel as nib
import pytest

from .cases import FidelityCheck, RunStore, build_catalogue, locate_testdata

pytestmark = pytest.mark.conformance

ROOT = locate_testdata()
if not (ROOT / "fidelity").is_dir():
    pytest.skip(f"fidelity test data not found below {ROOT}", allow_module_level=True)

CATALOGUE = build_catalogue(ROOT)
CHECKS: list[FidelityCheck] = CATALOGUE.checks_of(FidelityCheck)
RUNS = sorted({c.run for c in CHECKS})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunStore]:
    specs = [spec for spec in CATALOGUE.runs if spec.name in RUNS]
    store = RunStore(specs, tmp_path_factory.mktemp("seriesflow-fidelity"))
    store.start()
    yield store
    store.close()


@pytest.mark.parametrize("check", [pytest.param(c, id=c.check_id + c.run[-8:]) for c in CHECKS])
def test_matches_dcm2niix(check: FidelityCheck, runs: RunStore) -> None:
    outcome = check.evaluate(runs)
    assert outcome.passed, f"{outcome.reference} (ours: {outcome.ours}): {outcome.detail}"


@pytest.mark.parametrize("run_name", RUNS)
def test_every_volume_says_what_it_is(run_name: str, runs: RunStore) -> None:
    """A series split into several volumes says what each one is; a 4-D volume says its
    time spacing, and the image file carries the same."""
    result = runs.get(run_name)
    assert result.ok, result.describe_failure()
    for series in result.series():
        several = len(series.volumes) > 1
        labels = [(v.imageKind, v.phaseEncodingPolarity) for v in series.volumes]
        if several:
            assert len(set(labels)) == len(labels), labels
        for volume in series.volumes:
            assert volume.scaling is not None
            if volume.timepointCount > 1:
                assert volume.timeSpacing is not None and volume.timeSpacing > 0
                header: Any = nib.load(str(result.image(volume))).header
                assert abs(float(header["pixdim"][4]) - volume.timeSpacing) < 1e-4


def test_polarity_split_is_reported(runs: RunStore) -> None:
    """GE epi_pepolar CV12=2 (series 6): volumes 1 and 3 reversed, 2 and 4 normal; the
    normal part comes first and the reversed one says it was flipped."""
    result = runs.get("fidelity/dcm_qa_polar")
    (series,) = [s for s in result.series() if any(v.key.endswith("555-1") for v in s.volumes)]
    normal, reverse = series.volumes
    assert (normal.phaseEncodingPolarity, reverse.phaseEncodingPolarity) == ("NORMAL", "REVERSED")
    assert normal.timepointCount == reverse.timepointCount == 2
    assert any("flipped" in note for note in reverse.notes)
    assert not any("flipped" in note for note in normal.notes)


def test_precise_scaling_is_recorded(runs: RunStore) -> None:
    """Philips: display values by default, the private scale slope with --scaling precise."""
    display = runs.get("fidelity/dcm_qa_philips_vanderbilt")
    precise = runs.get("fidelity/dcm_qa_philips_vanderbilt --scaling precise")
    (_, shown), *_ = display.volumes()
    (_, exact), *_ = precise.volumes()
    assert shown.scaling is not None and exact.scaling is not None
    assert shown.scaling.values == "display" and shown.scaling.source == "RescaleSlope"
    assert exact.scaling.values == "precise"
    (ss,) = exact.scaling.philipsScaleSlopes
    ((slope, intercept),) = exact.scaling.factors
    assert abs(slope - 1 / ss) < 1e-9 * slope and intercept == 0
