"""Write ``docs/conformance.md``: seriesflow against every reference in the test data.

Run from the repository root::

    .venv/bin/python -m tests.conformance.report            # or
    .venv/bin/python tests/conformance/report.py [--output PATH] [--jobs N]

It runs seriesflow exactly as ``test_testdata.py`` and ``test_fidelity_*.py`` do (same
runs, same checks, from ``cases.py``) and tabulates every outcome, one table per set. Every
folder of ``fidelity/`` is listed, with a row saying so if no check covers it. A row that
did not pass must have an explanation in ``EXPLANATIONS`` (shown in its row): the exit
status is 1 when one has none (the report is still written), 0 otherwise, 2 when the
test data is missing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.conformance"

from .cases import (
    REPO_ROOT,
    Catalogue,
    FidelityCheck,
    Outcome,
    RunResult,
    RunStore,
    Status,
    build_catalogue,
    locate_testdata,
    seriesflow_command,
    unreferenced_volumes,
)
from .compare import AFFINE_ATOL, RTOL

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "conformance.md"
FIDELITY = "fidelity"
_MAX_DETAIL = 600

SET_NOTES: dict[str, str] = {
    "dcm_qa_ts": (
        "One Siemens MOSAIC image (384x384 = 6x6 tiles of 64x64, 35 slices) saved nine "
        "times. The nine files share one SeriesInstanceUID and one position, and differ "
        "only in SeriesNumber (1-9), SOPInstanceUID and transfer syntax, so each is "
        "converted in a run of its own. Transfer syntaxes: 1 explicit LE, 2 implicit LE, "
        "3 explicit big endian, 4 RLE, 5 and 6 JPEG lossless process 14 SV1 "
        "(1.2.840.10008.1.2.4.70; the testdata README counts 6 as JPEG-LS, but its "
        "header says otherwise), 7 and 8 JPEG-LS lossless, 9 JPEG 2000 lossless. Each "
        "file is checked against `Ref/N.nii` and against file 1."
    ),
    "dcm_qa_enh": (
        "Enhanced multi-frame MR. References are matched through their dcm2niix sidecar: "
        "our volumes of the series with the same SeriesNumber *and* SeriesDescription; "
        "when the series has several stacks the one that compares best is reported. "
        "`Philips_WIP_B0_NS_801` is one file of 64 frames: 32 magnitude frames "
        "(reference `_e1`) and 32 B0 field-map frames (`_e2_fieldmaphz`). The `_e1` "
        "reference holds Philips 'floating point' values (dcm2niix's default), "
        "FP = DV / (RS x SS); it is compared as display values DV (RescaleSlope/Intercept, "
        "the DICOM standard, which seriesflow applies by default and dicom2nifti always) by "
        "multiplying it by RS x SS from its sidecar; the rows marked `--scaling precise` "
        "come from a run with Philips' precise values and compare the references as they "
        "are. Only sidecars are shipped for the Canon and the Philips T1W3D and "
        "resting-state series, without their input."
    ),
    "dcm_qa_nih": (
        "A GE study (series 4-7: 15 slices x 10 volumes of EPI, one file per slice) and a "
        "Siemens study (series 3-6: two MOSAIC volumes of 5 slices each). Series numbers "
        "4-6 exist in both studies, so references are matched on SeriesNumber and "
        "SeriesDescription."
    ),
    "dicom2nifti/generic": (
        "`generic/compressed*` are one series (same SOP Instance UIDs, identical decoded "
        "pixels) in JPEG 2000 (`compressed` and `compressed_j2k` are byte-identical), "
        "JPEG lossless, JPEG-LS and RLE; each must equal its ground truth and the RLE "
        "variant. Contrary to the testdata README they are *not* the same image as "
        "`generic/anatomical/001`: same geometry, different pixel data and UIDs, so that "
        "comparison is not made."
    ),
    "dicom2nifti/failing": (
        "Series a converter must not stack silently. `notavolume` must be refused. The "
        "tilted and gappy cases are resampled (see docs/conversion.md) and compared with "
        "what Debian's dcm2niix writes for them at test time (`_Tilt_1`, `_Eq_1`, "
        "`_Tilt_Eq_1`): same grid within 0.01 mm, voxels correlated above 0.999; dcm2niix's "
        "`_Eq` stops short of the last slice, so only the slices it has are compared. "
        "dicom2nifti's `sliceincrement/002_ground_truth` is on another grid (slices 0.778 mm "
        "apart, the table increment, where the tilted planes are 0.750 mm apart), so it is "
        "not compared voxel by voxel. The 2-slice cases are volumes (the minimum is 2) and "
        "must equal their references exactly."
    ),
    "fidelity/dcm_qa_ct_philips_tilt": (
        "Philips head CT, 54 slices, 18.5 degrees of gantry tilt. seriesflow resamples it "
        "onto the tilted planes (512x600x54), like dcm2niix's `_Tilt_1`; compared by the "
        "resampling rule (same grid within 0.01 mm, voxel correlation above 0.999). "
        "dcm2niix's plain `201_STEREOTAXIS` (the slices stacked as they are, a sheared "
        "volume) has no counterpart: seriesflow never writes a sheared stack."
    ),
    "fidelity/dcm_qa_stc_uih": (
        "UIH DTI stored as VFRAME mosaics (17 files of 256x320 = 4x5 tiles of 64x64, 20 "
        "slices, each slice's position in (0065,1051)); unpacked into 64x64x20 x 17 "
        "volumes and compared exactly with dcm2niix's."
    ),
    "fidelity/dicom2nifti_siemens_fmri": (
        "Siemens mosaic fMRI without the number of images in the mosaic (no (0019,100A), no "
        "CSA header). dcm2niix guesses 64 slices (every tile of the 8x8 grid), dicom2nifti's "
        "ground truth has 50; seriesflow refuses each series as `mosaic_layout_unknown`."
    ),
}


SET_NOTES.update(
    {
        "fidelity/dcm_qa_polar": (
            "GE `research/ABCD/epi_pepolar` field-map EPI, series 6-9, 4 volumes of 60 "
            "slices each. User CV 12 (0019,10B3) says which volumes have reversed "
            "phase-encoding polarity (stored upside down): 0 none (series 9), 1 all "
            "(series 7), 2 the 1st and 3rd (series 6), 3 the 2nd and 4th (series 8). "
            "dcm2niix flips the reversed volumes and writes them of a mixed series as "
            "series number + 1000; seriesflow flips them and splits the series into a "
            "NORMAL and a REVERSED volume (`phaseEncodingPolarity`). Each reference is "
            "matched to the one volume of its series with that polarity."
        ),
        "fidelity/dcm_qa_fmap_ge": (
            "GE B0 field maps (series 2, 3, 6): a magnitude and a field map in Hz at the "
            "same positions, told apart by GE (0043,1030). dcm2niix writes them as two "
            "files (`_fieldmaphz`); each is matched to the one volume of its series with "
            "`imageKind` MAGNITUDE or FIELD_MAP_HZ."
        ),
        "fidelity/dcm_qa_philips_vanderbilt": (
            "Philips classic DTI, 40 slices x 17 images: b=0, 15 directions and a derived "
            "isotropic (trace) image (2001,1004 = I with b > 0). dcm2niix leaves the trace "
            "out of the DWI; its `_ADC` file holds all 17 volumes, the trace last, which "
            "is compared with seriesflow's TRACE volume. The references hold Philips "
            "floating-point values (`-p y`): the default run (display values) is compared "
            "after multiplying the reference by RS x SS from its sidecar; the "
            "`--scaling precise` run is compared as it is."
        ),
    }
)

EXPLANATIONS: dict[tuple[str, str], str] = {}
"""(set, reference label) -> why a row that does not pass is a documented difference."""


def _cell(text: str) -> str:
    text = " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    if len(text) > _MAX_DETAIL:  # keep both ends: the start says what, the end says why
        half = (_MAX_DETAIL - 5) // 2
        text = text[:half] + " ... " + text[-half:]
    return text.replace("|", "\\|")


def _result(outcome: Outcome) -> str:
    if outcome.status is Status.MATCH:
        return "match"
    if outcome.status is Status.REFUSED:
        return "refused (as required)"
    if outcome.status is Status.NO_REFERENCE:
        return "no reference"
    return f"**{outcome.status.value}**"


def _summary(outcomes: Sequence[Outcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
    passed = sum(o.passed for o in outcomes)
    failed = sum(not o.passed and not o.skipped for o in outcomes)
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{passed} passed, {failed} failed ({parts})"


def _run_rows(results: Sequence[RunResult]) -> list[str]:
    rows = ["| Run | Seconds | Volumes | Not converted | Outcome |", "|---|---:|---:|---:|---|"]
    for result in results:
        volumes = len(result.volumes())
        refused = sum(len(s.notConverted) for s in result.series())
        status = "ok" if result.ok else "**" + _cell(result.describe_failure()) + "**"
        rows.append(
            f"| `{result.spec.name}` | {result.seconds:.1f} | {volumes} | {refused} | {status} |"
        )
    return rows


def render(
    catalogue: Catalogue,
    outcomes: Sequence[Outcome],
    results: Sequence[RunResult],
    wall_seconds: float,
) -> str:
    sets: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        sets.setdefault(outcome.set_name, []).append(outcome)
    command = " ".join(seriesflow_command(Path("IN"), Path("OUT"))[1:])
    lines = [
        "# Conformance with reference converters",
        "",
        "Generated by `python -m tests.conformance.report` from the test data in "
        "`SERIESFLOW_TESTDATA` (see `../shared/testdata/README.md`); the same checks run as "
        "`pytest -m conformance`. Do not edit by hand.",
        "",
        f"Each input is converted with `python {command}`. A volume matches its reference "
        "when, after both are reoriented to the closest canonical (RAS+) orientation with "
        "nibabel and trailing axes of length 1 are dropped, the shapes are equal, the "
        "voxels (with `scl_slope`/`scl_inter` applied) are identical when both sides hold "
        f"integers and otherwise within rtol {RTOL} of the value plus {RTOL} of the "
        f"reference's range, and the 4x4 affines agree within {AFFINE_ATOL} mm. RGB is "
        "compared per channel (a reference's alpha channel is ignored).",
        "",
        "## Summary",
        "",
        "| Set | Checks | Result |",
        "|---|---:|---|",
    ]
    for set_name, rows in sets.items():
        lines.append(f"| {set_name} | {len(rows)} | {_summary(rows)} |")
    lines += ["", f"**All sets:** {_summary(outcomes)}.", ""]
    for set_name, rows in sets.items():
        lines += [f"## {set_name}", ""]
        if set_name in SET_NOTES:
            lines += [SET_NOTES[set_name], ""]
        lines += ["| Reference | Our volume | Result | Details |", "|---|---|---|---|"]
        for o in rows:
            ours = f"`{o.ours}`" if o.ours != "-" else "-"
            detail = o.detail
            why = EXPLANATIONS.get((o.set_name, o.reference))
            if why and not o.passed:
                detail = f"Explained: {why} / Found: {detail}"
            lines.append(f"| {_cell(o.reference)} | {ours} | {_result(o)} | {_cell(detail)} |")
        lines += ["", f"**Summary:** {_summary(rows)}.", ""]
    lines += [
        "## Runs",
        "",
        f"{len(results)} runs of seriesflow, in parallel; {wall_seconds:.1f} s wall time in all.",
        "",
        *_run_rows(results),
        "",
    ]
    return "\n".join(lines)


def unexplained(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Rows that neither pass nor are skipped, and that no EXPLANATIONS entry explains."""
    return [
        o
        for o in outcomes
        if not o.passed and not o.skipped and (o.set_name, o.reference) not in EXPLANATIONS
    ]


def uncovered_fidelity_folders(catalogue: Catalogue) -> list[Outcome]:
    """A 'no reference' row for each ``fidelity/`` folder that no check covers."""
    base = catalogue.root / FIDELITY
    folders = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    covered = {check.set_name for check in catalogue.checks}
    rows = []
    for folder in folders:
        name = f"{FIDELITY}/{folder}"
        if not any(s == name or s.startswith(name + "/") for s in covered):
            rows.append(Outcome(name, "-", "-", Status.NO_REFERENCE, "no check covers this folder"))
    return rows


def evaluate_all(catalogue: Catalogue, store: RunStore) -> list[Outcome]:
    """Every check's outcome, plus a 'no reference' row for each unreferenced volume and
    each fidelity folder without a check."""
    outcomes = [check.evaluate(store) for check in catalogue.checks]
    outcomes += uncovered_fidelity_folders(catalogue)
    fidelity = catalogue.checks_of(FidelityCheck)
    for run_name in dict.fromkeys(c.run for c in fidelity if c.set_name.startswith(FIDELITY)):
        result = store.get(run_name)
        if not result.ok:
            continue
        taken = {
            o.ours for c, o in zip(catalogue.checks, outcomes, strict=False) if c.run == run_name
        }
        set_name = next(c.set_name for c in fidelity if c.run == run_name)
        for _, volume in result.volumes():
            if volume.key not in taken:
                what = f"ours only ({run_name}): {volume.imageKind or 'kind unknown'}, " + (
                    "x".join(str(n) for n in volume.shape)
                )
                outcomes.append(Outcome(set_name, "-", volume.key, Status.NO_REFERENCE, what))
    for run_name in ("dcm_qa_enh", "dcm_qa_nih"):
        if run_name not in catalogue.run_names() or not store.get(run_name).ok:
            continue
        for key, what in unreferenced_volumes(catalogue, store, run_name):
            outcomes.append(Outcome(run_name, "-", key, Status.NO_REFERENCE, f"ours only: {what}"))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: CPUs)")
    args = parser.parse_args(argv)
    root = locate_testdata()
    if not root.is_dir():
        print(f"test data not found at {root} (set SERIESFLOW_TESTDATA)", file=sys.stderr)
        return 2
    catalogue = build_catalogue(root)
    with tempfile.TemporaryDirectory(prefix="seriesflow-conformance-") as tmp:
        store = RunStore(catalogue.runs, Path(tmp), args.jobs)
        started = time.perf_counter()
        store.start()
        results = store.results()
        wall = time.perf_counter() - started
        outcomes = evaluate_all(catalogue, store)
        store.close()
    text = render(catalogue, outcomes, results, wall)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"{args.output}: {_summary(outcomes)}; runs took {wall:.1f} s")
    missing = unexplained(outcomes)
    for o in missing:
        print(f"unexplained: {o.set_name} {o.reference}: {o.status.value}: {o.detail}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
