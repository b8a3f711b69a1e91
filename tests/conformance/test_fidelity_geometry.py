"""seriesflow on series that are not a plain stack of slices: gantry tilt, uneven spacing,
mosaics without per-slice geometry, two slices.

The checks are ``cases.GEOMETRY`` (resampled volumes against dcm2niix's ``_Tilt_1`` /
``_Eq_1``, by the rules of ``resampled.py``: same grid within 0.01 mm, voxels correlated
above 0.999; unpacked mosaics and 2-slice volumes exactly) and the refusals of
``cases.MOSAIC_LAYOUT_UNKNOWN``. Where the test data ships no dcm2niix reference (the
dicom2nifti failing cases), Debian's dcm2niix makes one at test time.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from shared.dicom.metadata import METADATA_FILE, load_metadata

from .cases import (
    EXIT_SUCCESS,
    REPO_ROOT,
    GeometryCheck,
    RefusalCheck,
    RunStore,
    build_catalogue,
    locate_testdata,
    seriesflow_command,
)

pytestmark = pytest.mark.conformance

ROOT = locate_testdata()
if not (ROOT / "fidelity").is_dir():
    pytest.skip(f"fidelity test data not found below {ROOT}", allow_module_level=True)

CATALOGUE = build_catalogue(ROOT)
CHECKS: list[GeometryCheck] = CATALOGUE.checks_of(GeometryCheck)
REFUSALS: list[RefusalCheck] = [
    c for c in CATALOGUE.checks_of(RefusalCheck) if c.set_name.startswith("fidelity/")
]
TILT = "fidelity/dcm_qa_ct_philips_tilt"
SCHEMA = REPO_ROOT / "shared" / "schemas" / "dicom-metadata.schema.json"
FAILING = ROOT / "dicom2nifti" / "failing"
STRICT = {  # --no-resample: the old refusals
    "strict/gantrytilting": (FAILING / "gantrytilting" / "001", "gantry_tilt"),
    "strict/sliceincrement": (FAILING / "sliceincrement" / "001", "inconsistent_spacing"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunStore]:
    names = {c.run for c in CHECKS} | {c.run for c in REFUSALS}
    specs = [spec for spec in CATALOGUE.runs if spec.name in names]
    store = RunStore(specs, tmp_path_factory.mktemp("seriesflow-geometry"))
    store.start()
    yield store
    store.close()


@pytest.mark.parametrize("check", [pytest.param(c, id=c.check_id) for c in CHECKS])
def test_matches_its_reference(check: GeometryCheck, runs: RunStore) -> None:
    outcome = check.evaluate(runs)
    if outcome.skipped:
        pytest.skip(outcome.detail)
    assert outcome.passed, f"{outcome.reference} (ours: {outcome.ours}): {outcome.detail}"


@pytest.mark.parametrize("check", [pytest.param(c, id=c.check_id) for c in REFUSALS])
def test_mosaic_without_layout_is_refused_with_its_code(
    check: RefusalCheck, runs: RunStore
) -> None:
    outcome = check.evaluate(runs)
    assert outcome.passed, outcome.detail
    assert "number of images" in outcome.detail


def test_resampling_is_recorded_in_the_metadata(runs: RunStore) -> None:
    result = runs.get(TILT)
    assert result.ok, result.describe_failure()
    ((_, volume),) = result.volumes()
    record = volume.resampling
    assert record is not None
    assert record.reasons == ["gantry_tilt"]
    assert record.tiltDegrees is not None and math.isclose(record.tiltDegrees, 18.5, abs_tol=0.05)
    assert record.interpolation == "linear"
    assert record.fillValue == -1024
    assert len(record.acquired.slicePositions) == 54
    # Table positions 2.5 mm apart; the tilted planes 2.5 cos(18.5) mm apart.
    assert math.isclose(
        record.acquired.spacing[2], 2.5 * math.cos(math.radians(18.5)), rel_tol=1e-4
    )
    assert volume.shape == [512, 600, 54]
    assert math.isclose(volume.spacing[2], record.acquired.spacing[2], rel_tol=1e-6)
    assert any("gantry tilt of 18.5 degrees removed" in note for note in volume.notes)
    document = json.loads((result.output / METADATA_FILE).read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.validate(document, schema)  # the schema file the project ships


@pytest.mark.parametrize("name", [n for n, (source, _) in STRICT.items() if source.is_dir()])
def test_no_resample_keeps_the_old_refusal(name: str, tmp_path: Path) -> None:
    source, code = STRICT[name]
    command = [*seriesflow_command(source, tmp_path), "--no-resample"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_SUCCESS, done.stderr  # a refusal is not damage
    metadata = load_metadata(tmp_path / METADATA_FILE)
    series = [se for st in metadata.studies for se in st.series]
    assert [se.volumes for se in series] == [[]]
    assert [nc.code for se in series for nc in se.notConverted] == [code]
