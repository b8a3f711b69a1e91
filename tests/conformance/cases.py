"""What the conformance suite checks, and how: shared by the tests and by the report.

The test data (``SERIESFLOW_TESTDATA``, default ``../shared/testdata`` beside the checkout)
is described in its README. This module turns it into:

* **runs**: one ``seriesflow process --format nii`` per input folder. Each ``dcm_qa_ts``
  file runs on its own, because the nine files share one SeriesInstanceUID and one
  position (they are one Siemens mosaic, saved nine times with a different SeriesNumber
  and transfer syntax) and would otherwise be one series. Each ``dicom2nifti`` case folder
  runs on its own too: several of them share a SeriesInstanceUID (``failing/slicecount``
  is the first two files of ``generic/anatomical/001``, the five ``generic/compressed*``
  folders hold the same instances). ``dcm_qa_enh`` and ``dcm_qa_nih`` run whole.
* **checks**, each of which evaluates to an :class:`Outcome`:

  - :class:`ReferenceCheck`: a run's single volume against one reference file;
  - :class:`SidecarCheck`: a reference of a multi-series run, found through its BIDS
    sidecar (see :func:`match_sidecar`);
  - :class:`CrossCheck`: the single volumes of two runs must be equal;
  - :class:`RefusalCheck`: a series a converter must not stack silently.

:class:`RunStore` runs seriesflow, all runs in parallel, at most once per run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from shared.dicom.metadata import (
    METADATA_FILE,
    SERIES_IMAGES_FILE,
    DicomMetadata,
    Series,
    Volume,
    load_metadata,
)

from .compare import Comparison, compare_nifti
from .resampled import compare_resampled, dcm2niix_output
from .resampled import summary as resampled_summary

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300.0
EXIT_SUCCESS = 0
EXIT_PARTIAL = 3
"""``seriesflow process`` finished, but skipped some files or left series unconverted (the
input folders hold README .txt files, and the failing cases are refused): a normal run."""

SERIES_NUMBER = "00200011"
SERIES_DESCRIPTION = "0008103E"


def locate_testdata() -> Path:
    """Where the test data is: ``SERIESFLOW_TESTDATA``, else ``../shared/testdata``."""
    configured = os.environ.get("SERIESFLOW_TESTDATA")
    if configured:
        return Path(configured).resolve()
    return (REPO_ROOT.parent / "shared" / "testdata").resolve()


# --------------------------------------------------------------------------------------
# Running seriesflow
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One ``seriesflow process`` invocation."""

    name: str
    """e.g. ``dcm_qa_nih`` or ``dicom2nifti/generic/rgb/001``."""
    source: Path
    """The input folder, or a single file that is staged into a folder of its own."""
    args: tuple[str, ...] = ()
    """Further ``seriesflow process`` options, e.g. ``("--scaling", "precise")``."""


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    output: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    metadata: DicomMetadata | None
    series_images: dict[str, str] | None
    problems: tuple[str, ...]
    """Why the run's outputs are unusable or inconsistent; empty when all is well."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe_failure(self) -> str:
        tail = self.stderr.strip().splitlines()[-15:]
        return "; ".join(self.problems) + ("\n" + "\n".join(tail) if tail else "")

    def volumes(self) -> list[tuple[Series, Volume]]:
        if self.metadata is None:
            return []
        return [
            (series, volume)
            for study in self.metadata.studies
            for series in study.series
            for volume in series.volumes
        ]

    def series(self) -> list[Series]:
        if self.metadata is None:
            return []
        return [series for study in self.metadata.studies for series in study.series]

    def image(self, volume: Volume) -> Path:
        return self.output / volume.image


def _all_series(metadata: DicomMetadata) -> list[Series]:
    return [series for study in metadata.studies for series in study.series]


def seriesflow_command(input_dir: Path, output_dir: Path, args: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "seriesflow",
        "process",
        "--input",
        str(input_dir),
        "--output",
        str(output_dir),
        "--format",
        "nii",
        *args,
    ]


def _check_outputs(output: Path) -> tuple[DicomMetadata | None, dict[str, str] | None, list[str]]:
    problems: list[str] = []
    metadata: DicomMetadata | None = None
    series_images: dict[str, str] | None = None
    try:
        metadata = load_metadata(output / METADATA_FILE)
    except Exception as exc:  # InvalidInputError, or anything else the loader raises
        problems.append(f"{METADATA_FILE}: {exc}")
    try:
        loaded = json.loads((output / SERIES_IMAGES_FILE).read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            series_images = {str(k): str(v) for k, v in loaded.items()}
        else:
            problems.append(f"{SERIES_IMAGES_FILE} is not an object")
    except (OSError, ValueError) as exc:
        problems.append(f"{SERIES_IMAGES_FILE}: {exc}")
    if metadata is not None:
        if series_images is not None and series_images != metadata.series_images():
            problems.append(f"{SERIES_IMAGES_FILE} disagrees with the volumes in {METADATA_FILE}")
        for study in metadata.studies:
            for series in study.series:
                for volume in series.volumes:
                    if not (output / volume.image).is_file():
                        problems.append(f"volume {volume.key}: {volume.image} was not written")
    return metadata, series_images, problems


def child_environment() -> dict[str, str]:
    """The environment for a process started from a :class:`RunStore` thread, as a copy.

    Without ``env``, a child started by ``subprocess`` execs with the C library's
    ``environ`` array, read while the main thread may change it: pytest sets and removes
    ``PYTEST_CURRENT_TEST`` around every test, and a freed or rewritten array made exec fail
    with ``OSError: [Errno 14] Bad address`` (seen in CI). A copy taken here is handed to
    exec as an array of its own."""
    return dict(os.environ)


def run_seriesflow(spec: RunSpec, workdir: Path) -> RunResult:
    """Run ``seriesflow process`` on one input; never raises for a failed run."""
    slug = spec.name.replace("/", "__")
    output = workdir / "out" / slug
    if spec.source.is_file():
        input_dir = workdir / "in" / slug
        input_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(spec.source, input_dir / spec.source.name)
    else:
        input_dir = spec.source
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            seriesflow_command(input_dir, output, spec.args),
            cwd=REPO_ROOT,
            env=child_environment(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = -1
        stdout = exc.stdout if isinstance(exc.stdout, str) else ""
        stderr = f"timed out after {RUN_TIMEOUT_S:.0f} s"
    seconds = time.perf_counter() - started
    problems: list[str] = []
    if returncode not in (EXIT_SUCCESS, EXIT_PARTIAL):
        problems.append(f"seriesflow process exited with {returncode}")
    metadata, series_images, output_problems = _check_outputs(output)
    problems.extend(output_problems)
    if returncode == EXIT_PARTIAL and metadata is not None:
        refused = any(series.notConverted for series in _all_series(metadata))
        if not metadata.skippedFiles and not refused:
            problems.append(
                f"exit status {EXIT_PARTIAL} (partial) but nothing is skipped or not converted"
            )
    return RunResult(
        spec=spec,
        output=output,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=seconds,
        metadata=metadata,
        series_images=series_images,
        problems=tuple(problems),
    )


class RunStore:
    """Runs each :class:`RunSpec` once, in parallel, and hands out the results."""

    def __init__(self, specs: Iterable[RunSpec], workdir: Path, jobs: int | None = None) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._workdir = workdir
        self._pool = ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2)
        self._futures: dict[str, Future[RunResult]] = {}
        self._lock = threading.Lock()

    def start(self, names: Iterable[str] | None = None) -> None:
        """Start these runs (default: all) now, so that they overlap."""
        for name in self._specs if names is None else names:
            self._future(name)

    def _future(self, name: str) -> Future[RunResult]:
        with self._lock:
            if name not in self._futures:
                self._futures[name] = self._pool.submit(
                    run_seriesflow, self._specs[name], self._workdir
                )
            return self._futures[name]

    def get(self, name: str) -> RunResult:
        return self._future(name).result()

    def results(self) -> list[RunResult]:
        return [self.get(name) for name in self._specs]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------


class Status(StrEnum):
    MATCH = "match"
    MISMATCH = "mismatch"
    REFUSED = "refused"
    WRONGLY_CONVERTED = "converted (must be refused)"
    WRONG_CODE = "refused with an unexpected code"
    NOT_FOUND = "no volume found"
    NO_REFERENCE = "no reference"
    UNVERIFIED = "resampled, unverified"
    RUN_FAILED = "run failed"


_PASSING = {Status.MATCH, Status.REFUSED}
_SKIPPED = {Status.NO_REFERENCE, Status.UNVERIFIED}


@dataclass(frozen=True)
class Outcome:
    """One row of the report, one test's verdict."""

    set_name: str
    reference: str
    ours: str
    status: Status
    detail: str
    comparison: Comparison | None = None

    @property
    def passed(self) -> bool:
        return self.status in _PASSING

    @property
    def skipped(self) -> bool:
        return self.status in _SKIPPED


def _run_failed(check_set: str, reference: str, run: RunResult) -> Outcome:
    return Outcome(check_set, reference, "-", Status.RUN_FAILED, run.describe_failure())


def _compare(
    set_name: str,
    reference_label: str,
    run: RunResult,
    series: Series,
    volume: Volume,
    reference: Path,
    reference_scale: float | None = None,
    scale_note: str = "",
) -> Outcome:
    comparison = compare_nifti(run.image(volume), reference, reference_scale=reference_scale)
    detail = comparison.summary()
    notes = list(comparison.notes)
    if scale_note:
        notes.insert(0, scale_note)
    if notes:
        detail += "; " + "; ".join(notes)
    status = Status.MATCH if comparison.ok else Status.MISMATCH
    return Outcome(set_name, reference_label, volume.key, status, detail, comparison)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceCheck:
    """The run's one volume equals ``reference``."""

    set_name: str
    check_id: str
    run: str
    reference: Path
    reference_label: str

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    def evaluate(self, store: RunStore) -> Outcome:
        result = store.get(self.run)
        if not result.ok:
            return _run_failed(self.set_name, self.reference_label, result)
        volumes = result.volumes()
        if len(volumes) != 1:
            refusals = _refusals(result)
            detail = f"{len(volumes)} volumes, expected exactly one"
            if refusals:
                detail += "; not converted: " + refusals
            keys = ", ".join(v.key for _, v in volumes) or "-"
            return Outcome(self.set_name, self.reference_label, keys, Status.NOT_FOUND, detail)
        series, volume = volumes[0]
        return _compare(self.set_name, self.reference_label, result, series, volume, self.reference)


@dataclass(frozen=True)
class CrossCheck:
    """The one volume of run ``run`` equals the one volume of run ``baseline``."""

    set_name: str
    check_id: str
    run: str
    baseline: str
    label: str

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run, self.baseline)

    def evaluate(self, store: RunStore) -> Outcome:
        ours, base = store.get(self.run), store.get(self.baseline)
        for result in (ours, base):
            if not result.ok:
                return _run_failed(self.set_name, self.label, result)
        mine, theirs = ours.volumes(), base.volumes()
        if len(mine) != 1 or len(theirs) != 1:
            detail = (
                f"{self.run}: {len(mine)} volumes, {self.baseline}: {len(theirs)} volumes; "
                "expected one each"
            )
            return Outcome(self.set_name, self.label, "-", Status.NOT_FOUND, detail)
        (series, volume), (_, base_volume) = mine[0], theirs[0]
        return _compare(self.set_name, self.label, ours, series, volume, base.image(base_volume))


def series_attribute(series: Series, volume: Volume | None, tag: str) -> Any:
    """First value of ``tag`` for a volume: its own attributes, else its series', else the
    value its instances (all of the series' when ``volume`` is None) agree on."""
    for attributes in ((volume.attributes if volume else {}), series.attributes):
        element = attributes.get(tag)
        if element and element.get("Value"):
            return element["Value"][0]
    wanted = set(volume.instances) if volume is not None and volume.instances else None
    values = {
        json.dumps(instance.attributes[tag].get("Value"), sort_keys=True)
        for instance in series.instances
        if (wanted is None or instance.SOPInstanceUID in wanted) and tag in instance.attributes
    }
    if len(values) == 1:
        value = json.loads(values.pop())
        if isinstance(value, list) and value:
            return value[0]
    return None


def series_number(series: Series, volume: Volume | None) -> int | None:
    """SeriesNumber (an IS: a number or a numeric string in the JSON Model)."""
    value = series_attribute(series, volume, SERIES_NUMBER)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def is_series_of(sidecar: Sidecar, series: Series, volume: Volume | None) -> bool:
    """Whether the sidecar describes this series: same SeriesNumber and SeriesDescription."""
    return (
        series_number(series, volume) == sidecar.series_number
        and series_attribute(series, volume, SERIES_DESCRIPTION) == sidecar.series_description
    )


@dataclass(frozen=True)
class Sidecar:
    path: Path
    data: dict[str, Any]

    @property
    def nifti(self) -> Path:
        plain = self.path.with_suffix(".nii")
        packed = self.path.with_suffix(".nii.gz")
        return packed if packed.is_file() and not plain.is_file() else plain

    @property
    def series_number(self) -> int | None:
        value = self.data.get("SeriesNumber")
        return int(value) if value is not None else None

    @property
    def series_description(self) -> str | None:
        value = self.data.get("SeriesDescription")
        return str(value) if value is not None else None

    def philips_display_scale(self) -> tuple[float, str] | None:
        """The factor that turns this reference's voxels into DICOM display values.

        dcm2niix writes Philips images, by default, with Philips' private "floating point"
        scaling, FP = DV / (RS * SS), where DV = stored value * RescaleSlope + Intercept is
        the display value the DICOM standard defines, RS the RescaleSlope and SS the
        private scale slope (2005,100E). The sidecar says so with
        ``UsePhilipsFloatNotDisplayScaling: 1``, but dcm2niix does not apply it to every
        image (a B0 field map keeps display values). Whether it did is read from the NIfTI
        header: FP scaling leaves ``scl_slope == 1 / SS``. Then DV = FP * RS * SS.
        """
        if self.data.get("UsePhilipsFloatNotDisplayScaling") != 1:
            return None
        rescale = self.data.get("PhilipsRescaleSlope")
        private = self.data.get("PhilipsScaleSlope")
        if not isinstance(rescale, int | float) or not isinstance(private, int | float):
            return None
        slope = float(load_header_slope(self.nifti))
        if abs(slope * float(private) - 1.0) > 1e-4:
            return None  # display values already
        factor = float(rescale) * float(private)
        if abs(factor - 1.0) <= 1e-4:
            return None  # SS = 1 / RS (Philips field maps): FP and display values coincide
        note = (
            f"reference holds Philips FP values (scl_slope 1/SS = {slope:.6g}); compared "
            f"as display values, x RS*SS = {rescale} * {private}"
        )
        return factor, note


def load_header_slope(path: Path) -> float:
    import nibabel as nib

    image: Any = nib.load(str(path))
    slope = image.dataobj.slope
    return float(slope)


def load_sidecar(path: Path) -> Sidecar:
    return Sidecar(path, json.loads(path.read_text(encoding="utf-8")))


def match_sidecar(run: RunResult, sidecar: Sidecar) -> list[tuple[Series, Volume]]:
    """Our volumes that may be the reference described by ``sidecar``.

    A reference is named after its series by dcm2niix (``%p_%s``: protocol and series
    number), and its sidecar carries SeriesNumber and SeriesDescription. A candidate is any
    volume of a series with the same SeriesNumber *and* SeriesDescription: the number
    alone is not unique in ``dcm_qa_nih``, whose GE and Siemens studies both have series
    4, 5 and 6. A series split into several stacks (Philips B0 NS: a magnitude stack and a
    field map) gives several candidates; :class:`SidecarCheck` then takes the one that
    compares best with the reference.
    """
    found = []
    for series, volume in run.volumes():
        if is_series_of(sidecar, series, volume):
            found.append((series, volume))
    return found


@dataclass(frozen=True)
class SidecarCheck:
    """A dcm2niix reference of a multi-series run, matched through its sidecar."""

    set_name: str
    check_id: str
    run: str
    sidecar: Path

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    @property
    def reference_label(self) -> str:
        return self.sidecar.with_suffix(".nii").name

    def evaluate(self, store: RunStore) -> Outcome:
        car = load_sidecar(self.sidecar)
        label = self.reference_label
        if not car.nifti.is_file():
            return Outcome(
                self.set_name,
                label,
                "-",
                Status.NO_REFERENCE,
                "only the sidecar is shipped: neither the reference NIfTI nor its DICOM "
                "input is in the test data",
            )
        result = store.get(self.run)
        if not result.ok:
            return _run_failed(self.set_name, label, result)
        candidates = match_sidecar(result, car)
        if not candidates:
            series = [s for s in result.series() if is_series_of(car, s, None)]
            detail = f"no volume of series {car.series_number} '{car.series_description}'" + (
                "; not converted: " + "; ".join(_describe_refusals(s) for s in series)
                if series
                else "; no such series in dicom-metadata.json"
            )
            return Outcome(self.set_name, label, "-", Status.NOT_FOUND, detail)
        scale = car.philips_display_scale()
        outcomes = [
            _compare(
                self.set_name,
                label,
                result,
                series,
                volume,
                car.nifti,
                reference_scale=scale[0] if scale else None,
                scale_note=scale[1] if scale else "",
            )
            for series, volume in candidates
        ]
        outcomes.sort(key=_closeness)
        best = outcomes[0]
        if len(outcomes) > 1:
            others = ", ".join(o.ours for o in outcomes[1:])
            best = Outcome(
                best.set_name,
                best.reference,
                best.ours,
                best.status,
                best.detail + f"; closest of {len(outcomes)} stacks of the series (also {others})",
                best.comparison,
            )
        return best


def _closeness(outcome: Outcome) -> tuple[int, int, float]:
    comparison = outcome.comparison
    if comparison is None:
        return (2, 0, 0.0)
    if comparison.max_abs_diff is None:
        return (1, len(comparison.problems), comparison.max_affine_diff)
    return (0 if comparison.ok else 1, len(comparison.problems), comparison.max_abs_diff)


@dataclass(frozen=True)
class RefusalCheck:
    """A series that must be refused (or, where allowed, resampled to match a reference).

    ``expected`` are acceptable notConverted codes. When ``split_codes`` is given, the
    series may instead be split into stacks that are each refused with one of those codes
    (e.g. split by orientation, each stack too few slices); at least two stacks must be
    refused then. A volume is only acceptable when seriesflow says it resampled (a note
    mentioning resampling) and ``ground_truth`` is a resampling reference that it matches.
    """

    set_name: str
    check_id: str
    run: str
    expected: tuple[str, ...]
    why: str
    split_codes: tuple[str, ...] = ()
    ground_truth: Path | None = None
    resampling_reference: bool = False
    """Whether ``ground_truth`` is what resampling the series produces."""

    @property
    def resample_reference(self) -> Path | None:
        return self.ground_truth if self.resampling_reference else None

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    @property
    def label(self) -> str:
        wanted = " or ".join(self.expected)
        if self.split_codes:
            wanted += f", or split with each stack {' or '.join(self.split_codes)}"
        return f"{self.check_id}: expects {wanted} ({self.why})"

    def evaluate(self, store: RunStore) -> Outcome:
        label = self.label
        result = store.get(self.run)
        if not result.ok:
            return _run_failed(self.set_name, label, result)
        volumes = result.volumes()
        refusals = [nc for series in result.series() for nc in series.notConverted]
        if volumes:
            resampled = [(s, v) for s, v in volumes if any("resampl" in n.lower() for n in v.notes)]
            keys = ", ".join(v.key for _, v in volumes)
            if len(resampled) != len(volumes):
                detail = f"stacked into {len(volumes)} volume(s) without resampling"
                if self.ground_truth is not None and len(volumes) == 1:
                    _, v = volumes[0]
                    comparison = compare_nifti(result.image(v), self.ground_truth)
                    detail += f"; vs {self.ground_truth.name}: {comparison.summary()}"
                return Outcome(self.set_name, label, keys, Status.WRONGLY_CONVERTED, detail)
            if self.resample_reference is None:
                return Outcome(
                    self.set_name,
                    label,
                    keys,
                    Status.UNVERIFIED,
                    "seriesflow resampled the series; there is no reference to check it",
                )
            if len(volumes) != 1:
                detail = f"resampled into {len(volumes)} volumes, the reference is one"
                return Outcome(self.set_name, label, keys, Status.MISMATCH, detail)
            series, volume = volumes[0]
            return _compare(self.set_name, label, result, series, volume, self.resample_reference)
        codes = [nc.code for nc in refusals]
        described = _refusals(result)
        if any(code in self.expected for code in codes):
            return Outcome(self.set_name, label, "-", Status.REFUSED, described)
        stacks = {nc.stack for nc in refusals if nc.code in self.split_codes}
        if self.split_codes and len(stacks) >= 2 and None not in stacks:
            return Outcome(self.set_name, label, "-", Status.REFUSED, described)
        wanted = " or ".join(self.expected)
        if self.split_codes:
            wanted += f", or >= 2 stacks each {' or '.join(self.split_codes)}"
        detail = f"expected {wanted}; got: {described or 'no notConverted entry at all'}"
        return Outcome(self.set_name, label, "-", Status.WRONG_CODE, detail)


def _describe_refusals(series: Series) -> str:
    parts = []
    for nc in series.notConverted:
        where = f"stack {nc.stack}: " if nc.stack is not None else ""
        parts.append(f"{where}{nc.code} ({nc.reason})")
    return "; ".join(parts)


def _refusals(result: RunResult) -> str:
    return "; ".join(d for d in (_describe_refusals(s) for s in result.series()) if d)


@dataclass(frozen=True)
class FidelityCheck:
    """A dcm2niix reference of a ``fidelity/`` folder, matched to the one volume that is it.

    dcm2niix names what it split off (``_fieldmaphz``, ``_ADC``, series number + 1000 for
    reversed phase-encoding polarity); seriesflow says it in the metadata. The volume is
    found by SeriesNumber and by ``imageKind`` and ``phaseEncodingPolarity`` where given
    (``not_kinds`` excludes kinds); exactly one volume must qualify. ``timepoint`` compares
    with one timepoint of a 4-D reference; ``display_sidecar`` compares a reference that
    holds Philips floating-point values as display values (see Sidecar.philips_display_scale).
    """

    set_name: str
    check_id: str
    run: str
    references: Path
    """The folder's ``Ref/``."""
    spec: Fidelity

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    @property
    def reference(self) -> Path:
        return self.references / self.spec.reference

    @property
    def label(self) -> str:
        return f"{self.spec.reference}: {self.spec.why}"

    def _wanted(self, series: Series, volume: Volume) -> bool:
        spec = self.spec
        return (
            series_number(series, volume) == spec.series
            and (spec.kind is None or volume.imageKind == spec.kind)
            and volume.imageKind not in spec.not_kinds
            and (spec.polarity is None or volume.phaseEncodingPolarity == spec.polarity)
        )

    def evaluate(self, store: RunStore) -> Outcome:
        result = store.get(self.run)
        if not result.ok:
            return _run_failed(self.set_name, self.label, result)
        found = [(s, v) for s, v in result.volumes() if self._wanted(s, v)]
        if len(found) != 1:
            what = ", ".join(
                f"{v.key} ({v.imageKind}, {v.phaseEncodingPolarity})"
                for s, v in result.volumes()
                if series_number(s, v) == self.spec.series
            )
            detail = (
                f"{len(found)} volumes qualify, expected one; series {self.spec.series}: {what}"
            )
            refusals = _refusals(result)
            if refusals:
                detail += "; not converted: " + refusals
            return Outcome(self.set_name, self.label, "-", Status.NOT_FOUND, detail)
        _, volume = found[0]
        scale = None
        if self.spec.display_sidecar is not None:
            sidecar = load_sidecar(self.references / self.spec.display_sidecar)
            scale = sidecar.philips_display_scale()
        comparison = compare_nifti(
            result.image(volume),
            self.reference,
            reference_scale=scale[0] if scale else None,
            reference_timepoint=self.spec.timepoint,
        )
        notes = ([scale[1]] if scale else []) + list(comparison.notes)
        detail = comparison.summary() + ("; " + "; ".join(notes) if notes else "")
        status = Status.MATCH if comparison.ok else Status.MISMATCH
        return Outcome(self.set_name, self.label, volume.key, status, detail, comparison)


@dataclass(frozen=True)
class GeometryCheck:
    """A volume that is not a plain stack of its files' slices, against a reference.

    ``resampled``: the volume must say it was resampled (its ``resampling`` record) and is
    compared by the rules of ``resampled.py`` (same grid, voxel correlation), its first
    ``slices`` slices only when given; otherwise it must be a plain stack, compared exactly.
    The reference is ``reference``, or else what Debian's dcm2niix writes for ``source``
    into a file ending in ``dcm2niix_suffix``. ``series`` picks the volume of that
    SeriesNumber when the run has several. ``note`` explains what the reference differs in.
    """

    set_name: str
    check_id: str
    run: str
    source: Path
    why: str
    reference: Path | None = None
    dcm2niix_suffix: str | None = None
    series: int | None = None
    resampled: bool = True
    slices: int | None = None
    note: str = ""

    @property
    def runs(self) -> tuple[str, ...]:
        return (self.run,)

    @property
    def label(self) -> str:
        where = self.reference.name if self.reference else f"dcm2niix *{self.dcm2niix_suffix}"
        return f"{self.check_id} vs {where}: {self.why}"

    def evaluate(self, store: RunStore) -> Outcome:
        label = self.label
        result = store.get(self.run)
        if not result.ok:
            return _run_failed(self.set_name, label, result)
        found = [
            (s, v)
            for s, v in result.volumes()
            if self.series is None or series_number(s, v) == self.series
        ]
        if len(found) != 1:
            detail = f"{len(found)} volumes, expected one"
            if _refusals(result):
                detail += "; not converted: " + _refusals(result)
            return Outcome(self.set_name, label, "-", Status.NOT_FOUND, detail)
        _, volume = found[0]
        if self.resampled != (volume.resampling is not None):
            detail = "stacked without resampling" if self.resampled else "resampled, not stacked"
            return Outcome(self.set_name, label, volume.key, Status.WRONGLY_CONVERTED, detail)
        with tempfile.TemporaryDirectory(prefix="seriesflow-dcm2niix-") as tmp:
            reference = self.reference
            if reference is None and self.dcm2niix_suffix:
                reference = dcm2niix_output(self.source, self.dcm2niix_suffix, Path(tmp))
            if reference is None or not reference.is_file():
                return Outcome(
                    self.set_name,
                    label,
                    volume.key,
                    Status.NO_REFERENCE,
                    "no reference: dcm2niix is not installed or wrote no such file",
                )
            if self.resampled:
                comparison = compare_resampled(result.image(volume), reference, self.slices)
            else:
                comparison = compare_nifti(result.image(volume), reference)
        line = resampled_summary(comparison) if self.resampled else comparison.summary()
        detail = "; ".join([line, *comparison.notes, *([self.note] * bool(self.note))])
        status = Status.MATCH if comparison.ok else Status.MISMATCH
        return Outcome(self.set_name, label, volume.key, status, detail, comparison)


Check = ReferenceCheck | SidecarCheck | CrossCheck | RefusalCheck | FidelityCheck | GeometryCheck


# --------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------

DCM_QA_TS_BASELINE = 1
"""dcm_qa_ts/In/1.dcm: explicit VR little endian, uncompressed; the others must equal it."""

COMPRESSED_VARIANTS = ("compressed", "compressed_j2k", "compressed_jpeg", "compressed_jpegls")
COMPRESSED_BASELINE = "compressed_rle"
"""RLE lossless, the simplest codec; all five generic/compressed* folders hold the same
instances (same SOP Instance UIDs, same decoded pixels; ``compressed`` and
``compressed_j2k`` are byte-identical JPEG 2000 files). Note that they are *not* the same
image as ``generic/anatomical/001``: same geometry, different pixel data and UIDs."""

RESAMPLING_REFERENCES: frozenset[str] = frozenset()
"""Failing cases refused by seriesflow whose ground truth is a resampling. None since
seriesflow resamples tilt and uneven spacing itself: those cases are in ``GEOMETRY``."""

FAILING: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # case: (accepted codes, per-stack codes for a split series, why)
    "notavolume/001": (("not_a_volume",), (), "all four images at one position"),
}
"""The failing cases seriesflow refuses; the others it converts (see ``GEOMETRY``)."""

_TILT_WHY = "slice positions advance along z while the slice normal is tilted"
_D2N_GRID = (
    "dicom2nifti's 002_ground_truth is on another grid (slices 0.778 mm apart, the table "
    "increment, where the tilted planes are 0.750 mm apart; 5 slices from a different "
    "origin), so it is not compared voxel by voxel"
)


@dataclass(frozen=True)
class Geometry:
    """A case whose slices are not a plain stack, and the reference it must match."""

    source: str
    """Input folder, relative to the test data root."""
    why: str
    reference: str | None = None
    """Reference file, relative to the test data root; else dcm2niix's output."""
    dcm2niix_suffix: str | None = None
    series: int | None = None
    resampled: bool = True
    slices: int | None = None
    note: str = ""


GEOMETRY: dict[str, Geometry] = {
    "fidelity/dcm_qa_ct_philips_tilt": Geometry(
        "fidelity/dcm_qa_ct_philips_tilt/In",
        "Philips head CT, 18.5 degrees of gantry tilt, resampled like dcm2niix's _Tilt_1",
        reference="fidelity/dcm_qa_ct_philips_tilt/Ref/201_STEREOTAXIS_Tilt_1.nii.gz",
        note="dcm2niix's 201_STEREOTAXIS.nii.gz (the tilted slices stacked as they are: a "
        "sheared volume) has no counterpart; seriesflow never writes a sheared stack",
    ),
    "fidelity/dcm_qa_stc_uih": Geometry(
        "fidelity/dcm_qa_stc_uih/In",
        "UIH VFRAME mosaics unpacked into 64x64x20 slices x 17 volumes",
        reference="fidelity/dcm_qa_stc_uih/Ref/12_dti_tra_dir16_PA_rot_SaveBySlc.nii.gz",
        resampled=False,
    ),
    "dicom2nifti/failing/gantrytilting/001": Geometry(
        "dicom2nifti/failing/gantrytilting/001",
        _TILT_WHY + " by 14 degrees: resampled",
        dcm2niix_suffix="_Tilt_1.nii",
    ),
    "dicom2nifti/failing/sliceincrement/001": Geometry(
        "dicom2nifti/failing/sliceincrement/001",
        "z = 18.1, 23.1, 28.1, 38.1: the missing slice at 33.1 is interpolated (5 slices)",
        dcm2niix_suffix="_Eq_1.nii",
        slices=4,
        note="dcm2niix's _Eq_1 stops at 33.1 mm, short of the last slice",
    ),
    "dicom2nifti/failing/sliceincrement/002": Geometry(
        "dicom2nifti/failing/sliceincrement/002",
        "instance 4 missing and tilted by 15.5 degrees: both resampled (5 slices)",
        dcm2niix_suffix="_Tilt_Eq_1.nii",
        slices=3,
        note="dcm2niix's _Tilt_Eq_1 stops short of the last slice; " + _D2N_GRID,
    ),
    "dicom2nifti/failing/slicecount/001": Geometry(
        "dicom2nifti/failing/slicecount/001",
        "two slices: a volume (the minimum is 2 slices)",
        reference="dicom2nifti/failing/slicecount/001_ground_truth.nii.gz",
        resampled=False,
    ),
    "dicom2nifti/failing/sliceorientation/001 202": Geometry(
        "dicom2nifti/failing/sliceorientation/001",
        "one SeriesInstanceUID, two orientations: series 202, two slices",
        dcm2niix_suffix="202.nii",
        series=202,
        resampled=False,
    ),
    "dicom2nifti/failing/sliceorientation/001 501": Geometry(
        "dicom2nifti/failing/sliceorientation/001",
        "one SeriesInstanceUID, two orientations: series 501, two slices",
        dcm2niix_suffix="501.nii",
        series=501,
        resampled=False,
    ),
}
"""Cases converted by resampling or unpacking, or plain 2-slice volumes, and their references."""

MOSAIC_LAYOUT_UNKNOWN = ("001", "001_implicit")
"""``fidelity/dicom2nifti_siemens_fmri/In`` folders: Siemens mosaics without the number of
images (no (0019,100A), no CSA header). dcm2niix guesses 64 slices (the whole 8x8 grid);
dicom2nifti's ground truth has 50; seriesflow refuses them as ``mosaic_layout_unknown``."""

PRECISE = ("--scaling", "precise")
"""Philips' floating-point values, dcm2niix's default (``-p y``)."""


@dataclass(frozen=True)
class Fidelity:
    """One reference of a ``fidelity/`` folder, and what it must be matched with."""

    reference: str
    series: int
    why: str
    kind: str | None = None
    not_kinds: tuple[str, ...] = ()
    polarity: str | None = None
    timepoint: int | None = None
    display_sidecar: str | None = None
    """Set for a display-value run: the sidecar whose Philips factors scale the reference."""
    args: tuple[str, ...] = ()


_DWI_TRACE = "the derived isotropic (trace) volume, which dcm2niix writes last in _ADC"
FIDELITY: dict[str, tuple[Fidelity, ...]] = {
    "fidelity/dcm_qa_polar": (
        Fidelity("6_FM_cv12_2_3mm.nii.gz", 6, "CV12=2: 2nd and 4th volume", polarity="NORMAL"),
        Fidelity(
            "1006_FM_cv12_2_3mm.nii.gz", 6, "CV12=2: 1st and 3rd, reversed", polarity="REVERSED"
        ),
        Fidelity("7_FM_cv12_1_3mm.nii.gz", 7, "CV12=1: all reversed", polarity="REVERSED"),
        Fidelity("8_FM_cv12_3_3mm.nii.gz", 8, "CV12=3: 1st and 3rd volume", polarity="NORMAL"),
        Fidelity(
            "1008_FM_cv12_3_3mm.nii.gz", 8, "CV12=3: 2nd and 4th, reversed", polarity="REVERSED"
        ),
        Fidelity("9_FM_cv12_0_3mm.nii.gz", 9, "CV12=0: all normal", polarity="NORMAL"),
    ),
    "fidelity/dcm_qa_fmap_ge": tuple(
        item
        for number, name in ((2, "B0Map_(GRE)"), (3, "3DB0Map"), (6, "B0map"))
        for item in (
            Fidelity(f"{number}_{name}.nii.gz", number, "the magnitude", kind="MAGNITUDE"),
            Fidelity(
                f"{number}_{name}_fieldmaphz.nii.gz",
                number,
                "the field map in Hz",
                kind="FIELD_MAP_HZ",
            ),
        )
    ),
    "dcm_qa_enh": (
        Fidelity(
            "Philips_WIP_B0_NS_801_e1.nii",
            801,
            "the magnitude, --scaling precise (dcm2niix's Philips values)",
            kind="MAGNITUDE",
            args=PRECISE,
        ),
        Fidelity(
            "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii",
            801,
            "the field map, --scaling precise",
            kind="FIELD_MAP",
            args=PRECISE,
        ),
    ),
    "fidelity/dcm_qa_philips_vanderbilt": (
        Fidelity(
            "601_dti_ax.nii.gz",
            601,
            "the DWI without its trace, display values",
            not_kinds=("TRACE",),
            display_sidecar="601_dti_ax.json",
        ),
        Fidelity(
            "601_dti_ax_ADC.nii.gz",
            601,
            _DWI_TRACE + ", display values",
            kind="TRACE",
            timepoint=16,
            display_sidecar="601_dti_ax.json",
        ),
        Fidelity(
            "601_dti_ax.nii.gz",
            601,
            "the DWI without its trace, --scaling precise",
            not_kinds=("TRACE",),
            args=PRECISE,
        ),
        Fidelity(
            "601_dti_ax_ADC.nii.gz",
            601,
            _DWI_TRACE + ", --scaling precise",
            kind="TRACE",
            timepoint=16,
            args=PRECISE,
        ),
    ),
}
"""Folders (below the test data) whose dcm2niix references seriesflow must reproduce
exactly, with the volume each reference is, and the options of the run."""


def _reference_cases(root: Path) -> list[Path]:
    """dicom2nifti case folders that have a ``<case>_ground_truth.nii.gz`` beside them."""
    cases = []
    for truth in sorted((root / "dicom2nifti").rglob("*_ground_truth.nii.gz")):
        relative = truth.relative_to(root / "dicom2nifti")
        if relative.parts[0] == "failing":
            continue
        case = truth.with_name(truth.name.removesuffix("_ground_truth.nii.gz"))
        if case.is_dir():
            cases.append(case)
    return cases


def _d2n_set(case: Path, root: Path) -> str:
    relative = case.relative_to(root / "dicom2nifti")
    return "dicom2nifti/" + relative.parts[0]


@dataclass
class Catalogue:
    root: Path
    runs: list[RunSpec] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def run_names(self) -> list[str]:
        return [spec.name for spec in self.runs]

    def checks_of(self, kind: type[Any]) -> list[Any]:
        return [check for check in self.checks if isinstance(check, kind)]


def build_catalogue(root: Path) -> Catalogue:
    """Every run and check the test data supports (see the module docstring)."""
    cat = Catalogue(root)
    runs: dict[str, RunSpec] = {}

    def run(name: str, source: Path) -> str:
        runs.setdefault(name, RunSpec(name, source))
        return name

    # dcm_qa_ts: one mosaic in nine transfer syntaxes.
    ts = root / "dcm_qa_ts"
    for n in range(1, 10):
        source = ts / "In" / f"{n}.dcm"
        if not source.is_file():
            continue
        name = run(f"dcm_qa_ts/{n}", source)
        reference = ts / "Ref" / f"{n}.nii"
        if reference.is_file():
            cat.checks.append(ReferenceCheck("dcm_qa_ts", f"{n}", name, reference, f"Ref/{n}.nii"))
    for n in range(1, 10):
        if n == DCM_QA_TS_BASELINE or f"dcm_qa_ts/{n}" not in runs:
            continue
        if f"dcm_qa_ts/{DCM_QA_TS_BASELINE}" not in runs:
            break
        cat.checks.append(
            CrossCheck(
                "dcm_qa_ts",
                f"{n}=={DCM_QA_TS_BASELINE}",
                f"dcm_qa_ts/{n}",
                f"dcm_qa_ts/{DCM_QA_TS_BASELINE}",
                f"In/{n}.dcm == In/{DCM_QA_TS_BASELINE}.dcm",
            )
        )

    # dcm_qa_enh and dcm_qa_nih: whole folders, references found through sidecars.
    for set_name in ("dcm_qa_enh", "dcm_qa_nih"):
        base = root / set_name
        if not (base / "In").is_dir():
            continue
        name = run(set_name, base / "In")
        for sidecar in sorted((base / "Ref").glob("*.json")):
            cat.checks.append(SidecarCheck(set_name, sidecar.stem, name, sidecar))

    # dicom2nifti: one run per case folder.
    d2n = root / "dicom2nifti"
    for case in _reference_cases(root):
        relative = case.relative_to(d2n).as_posix()
        name = run(f"dicom2nifti/{relative}", case)
        truth = case.with_name(case.name + "_ground_truth.nii.gz")
        set_name = _d2n_set(case, root)
        label = truth.relative_to(root / set_name).as_posix()
        cat.checks.append(ReferenceCheck(set_name, relative, name, truth, label))
    generic = d2n / "generic"
    if (generic / COMPRESSED_BASELINE / "001").is_dir():
        baseline = f"dicom2nifti/generic/{COMPRESSED_BASELINE}/001"
        for variant in COMPRESSED_VARIANTS:
            if not (generic / variant / "001").is_dir():
                continue
            cat.checks.append(
                CrossCheck(
                    "dicom2nifti/generic",
                    f"{variant}=={COMPRESSED_BASELINE}",
                    f"dicom2nifti/generic/{variant}/001",
                    baseline,
                    f"{variant}/001 == {COMPRESSED_BASELINE}/001",
                )
            )
    for case_name, (codes, split, why) in FAILING.items():
        folder = d2n / "failing" / case_name
        if not folder.is_dir():
            continue
        name = run(f"dicom2nifti/failing/{case_name}", folder)
        truth = folder.with_name(folder.name + "_ground_truth.nii.gz")
        cat.checks.append(
            RefusalCheck(
                "dicom2nifti/failing",
                case_name,
                name,
                codes,
                why,
                split_codes=split,
                ground_truth=truth if truth.is_file() else None,
                resampling_reference=case_name in RESAMPLING_REFERENCES,
            )
        )
    for folder_name, items in FIDELITY.items():
        base = root / folder_name
        if not (base / "In").is_dir():
            continue
        for n, item in enumerate(items, start=1):
            run_name = folder_name + (" " + " ".join(item.args) if item.args else "")
            runs.setdefault(run_name, RunSpec(run_name, base / "In", item.args))
            cat.checks.append(
                FidelityCheck(folder_name, f"{base.name}-{n}", run_name, base / "Ref", item)
            )
    for name, geometry in GEOMETRY.items():
        source = root / geometry.source
        if not source.is_dir():
            continue
        run_name = run(geometry.source.removesuffix("/In"), source)
        cat.checks.append(
            GeometryCheck(
                set_name="dicom2nifti/failing" if "failing" in run_name else run_name,
                check_id=name.split("/", 2)[-1] if "failing" in name else name.split("/")[-1],
                run=run_name,
                source=source,
                why=geometry.why,
                reference=root / geometry.reference if geometry.reference else None,
                dcm2niix_suffix=geometry.dcm2niix_suffix,
                series=geometry.series,
                resampled=geometry.resampled,
                slices=geometry.slices,
                note=geometry.note,
            )
        )
    fmri = root / "fidelity" / "dicom2nifti_siemens_fmri" / "In"
    for layout_case in MOSAIC_LAYOUT_UNKNOWN:
        if not (fmri / layout_case).is_dir():
            continue
        name = run(f"fidelity/dicom2nifti_siemens_fmri/{layout_case}", fmri / layout_case)
        cat.checks.append(
            RefusalCheck(
                "fidelity/dicom2nifti_siemens_fmri",
                layout_case,
                name,
                ("mosaic_layout_unknown",),
                "Siemens mosaic without the number of images it holds",
            )
        )
    cat.runs = list(runs.values())
    return cat


def unreferenced_volumes(
    catalogue: Catalogue, store: RunStore, run_name: str
) -> list[tuple[str, str]]:
    """Our volumes of ``run_name`` that no reference was matched to: (key, what it is)."""
    return [(key, what) for key, _, what in _unreferenced(catalogue, store, run_name)]


def _unreferenced(
    catalogue: Catalogue, store: RunStore, run_name: str
) -> list[tuple[str, tuple[int | None, str | None], str]]:
    checks = [c for c in catalogue.checks_of(SidecarCheck) if c.run == run_name]
    sidecars = [load_sidecar(check.sidecar) for check in checks]
    taken = {outcome.ours for outcome in (check.evaluate(store) for check in checks)}
    rows = []
    for series, volume in store.get(run_name).volumes():
        if volume.key in taken:
            continue
        number = series_number(series, volume)
        description = series_attribute(series, volume, SERIES_DESCRIPTION)
        shape = "x".join(str(n) for n in volume.shape)
        what = f"series {number} '{description}', {shape}"
        if any(is_series_of(car, series, volume) for car in sidecars):
            what += " (another stack of a series that has a reference)"
        rows.append((volume.key, (number, description), what))
    return rows


EXPECTED_UNREFERENCED: dict[str, dict[tuple[int, str], str]] = {
    "dcm_qa_enh": {},
    "dcm_qa_nih": {},
}
"""For the whole-folder runs: the volumes that no reference matches, by (SeriesNumber,
SeriesDescription), each with the reason it has none. Empty: every volume seriesflow writes
for these folders has its reference. A volume without one that is not listed here, or an
entry here that no longer applies, fails ``test_volumes_without_reference_are_expected``."""


def unexpected_unreferenced(
    catalogue: Catalogue, store: RunStore, run_name: str
) -> tuple[list[str], list[str]]:
    """(our volumes without a reference that ``EXPECTED_UNREFERENCED`` does not list,
    entries of it that no volume needs)."""
    expected = EXPECTED_UNREFERENCED.get(run_name, {})
    rows = _unreferenced(catalogue, store, run_name)
    unexpected = [f"{key}: {what}" for key, series, what in rows if series not in expected]
    seen = {series for _, series, _ in rows}
    stale = [f"{series}: {why}" for series, why in expected.items() if series not in seen]
    return unexpected, stale
