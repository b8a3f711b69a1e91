"""The ``seriesflow`` command line.

Every command turns a :class:`~shared.errors.SeriesflowError` into a one-line message on
stderr and a non-zero exit status; no traceback reaches the user for bad input.

Exit status: 0 done (files that are not DICOM, and series that do not form a volume, are
recorded in the metadata); 1 bad input, settings or output folder; 2 usage error; 3 done,
but some DICOM data was damaged: a Part-10 file that could not be read, or pixel data that
could not be decoded (listed in dicom-metadata.json); 143 stopped by SIGTERM.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import uuid
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

import seriesflow.lazy_imports  # noqa: F401  (first: imports pydicom without requests)
from shared.dicom.metadata import (
    METADATA_FILE,
    SERIES_IMAGES_FILE,
    json_schema,
    load_metadata,
    load_series_images,
)
from shared.errors import InvalidInputError, SeriesflowError
from shared.logs import configure_logging, job_context
from shared.operator.parser import ParseSummary, run_parser_operator
from shared.operator.selector import run_selector_operator
from shared.operator.settings import OperatorSettings
from shared.selection import (
    SelectionRules,
    explain,
    load_rules_file,
    render_explanation,
    resolve_rules,
)
from shared.volumes.convert import ConversionOptions
from shared.volumes.kinds import SCALING_MODES
from shared.volumes.writer import parse_image_format

if TYPE_CHECKING:  # rich is imported when something is printed, not by every command
    from rich.console import Console
    from rich.progress import Progress, TaskID

EXIT_BAD_INPUT = 1
EXIT_DAMAGED = 3

_app = typer.Typer(
    name="seriesflow",
    help="Receive DICOM, convert series into volumes, select series with rules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
rules_app = typer.Typer(help="Check and explain selection rules.", no_args_is_help=True)
sample_app = typer.Typer(
    help="Write synthetic DICOM studies for demos and tests.", no_args_is_help=True
)
_app.add_typer(rules_app, name="rules")
_app.add_typer(sample_app, name="sample")
OPERATOR_COMMANDS = frozenset({"process", "select", "rules", "schema", "sample"})
"""The commands registered here; the service, retention, quarantine and config commands
(and their imports: settings, object store, HTTP clients) are added by :func:`full_app`."""


def operator_command() -> bool:
    """Whether the command line asks for one of :data:`OPERATOR_COMMANDS`."""
    return (sys.argv[1] if len(sys.argv) > 1 else "") in OPERATOR_COMMANDS


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True)


@cache
def out() -> Console:
    from rich.console import Console

    return Console()


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    err().print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(status)


def _settings() -> OperatorSettings:
    try:
        return OperatorSettings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            where = ".".join(map(str, error["loc"]))  # the variable, e.g. SERIESFLOW_PROCESSES
            problems.append(f"{where}: {message}" if where else message)
        _fail(f"invalid environment: {'; '.join(problems)}")


def _rules(explicit: Path | None, settings: OperatorSettings) -> SelectionRules:
    source = resolve_rules(explicit, settings.selection_rules_base64, settings.selection_rules_file)
    return source.parse()


CLARA_LOG_DIR = Path("/logs")
LogsOption = Annotated[
    Path | None,
    typer.Option(
        "--logs",
        help="Folder for JSON-lines logs. Default: SERIESFLOW_LOG_DIR, else /logs if it "
        "exists (as in Clara), else no log file.",
    ),
]


def _start_logging(logs: Path | None, settings: OperatorSettings) -> None:
    folder = logs or (Path(settings.log_dir) if settings.log_dir else None)
    if folder is None and CLARA_LOG_DIR.is_dir() and os.access(CLARA_LOG_DIR, os.W_OK):
        folder = CLARA_LOG_DIR
    try:
        configure_logging(settings.log_level, folder, phi=settings.log_phi)
    except (OSError, ValueError) as exc:
        _fail(f"cannot log to {folder}: {exc}")


InputOption = Annotated[Path, typer.Option("--input", "-i", help="Folder to read.")]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Folder to write.")]
RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        "-r",
        help="Selection rules file (JSON or YAML). Overrides NVIDIA_CLARA_SELECTION_RULES_BASE64 "
        "and NVIDIA_CLARA_SELECTION_RULES_FILE.",
    ),
]


@_app.command()
def process(
    input_dir: InputOption = Path("/input"),
    output_dir: OutputOption = Path("/output"),
    image_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="mhd, nii or nii.gz. Default: NVIDIA_CLARA_IMAGE_FORMAT, else mhd.",
        ),
    ] = None,
    rules: RulesOption = None,
    min_slices: Annotated[
        int | None, typer.Option(help="Fewest slices a multi-image stack needs (default 2).")
    ] = None,
    resample: Annotated[
        bool | None,
        typer.Option(
            "--resample/--no-resample",
            help="Resample gantry-tilted and unevenly spaced stacks onto a regular grid "
            "(default; SERIESFLOW_RESAMPLE). --no-resample refuses them instead.",
        ),
    ] = None,
    scaling: Annotated[
        str | None,
        typer.Option(
            help="display (RescaleSlope/Intercept) or precise (Philips floating-point values). "
            "Default: SERIESFLOW_SCALING, else display.",
        ),
    ] = None,
    previews: Annotated[
        bool | None,
        typer.Option(
            "--previews/--no-previews",
            help="Write a PNG of each volume's three middle slices beside it (default; "
            "SERIESFLOW_PREVIEWS).",
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes converting series at once: 1, or 2 to use a second CPU for more "
            "memory. Default: SERIESFLOW_PROCESSES, else 1.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    logs: LogsOption = None,
) -> None:
    """Parse every DICOM file below INPUT, convert its series, and select (the DICOM Parser)."""
    settings = _settings()
    _start_logging(logs, settings)
    try:
        fmt = parse_image_format(image_format or settings.image_format, "--format")
    except InvalidInputError as exc:
        _fail(exc.reason, 2)
        return
    mode = (scaling or settings.scaling).strip().lower()
    if mode not in SCALING_MODES:
        _fail(f"--scaling must be one of {', '.join(SCALING_MODES)}, not {scaling!r}", 2)
    options = ConversionOptions(
        image_format=fmt,
        min_slices=min_slices if min_slices is not None else settings.min_slices,
        resample=resample if resample is not None else settings.resample,
        scaling="precise" if mode == "precise" else "display",
        previews=previews if previews is not None else settings.previews,
    )
    if options.min_slices < 2:
        _fail("--min-slices must be at least 2", 2)
    try:
        selection_rules = _rules(rules, settings)
        with _progress(quiet) as progress, job_context(uuid.uuid4().hex):
            summary = run_parser_operator(
                input_dir,
                output_dir,
                options,
                selection_rules,
                progress,
                processes if processes is not None else settings.processes,
            )
    except SeriesflowError as exc:
        _fail(exc.reason)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or output_dir}")
    if not quiet and summary.instances:
        _print_summary(summary, output_dir)
    if summary.instances == 0:
        _fail(f"no DICOM instances found below {input_dir}")
    if summary.damaged:
        raise typer.Exit(EXIT_DAMAGED)


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _progress(quiet: bool) -> _ProgressContext:
    return _ProgressContext(enabled=not quiet and sys.stderr.isatty())


class _ProgressContext:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _ProgressContext:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err(),
                transient=True,
            )
            self.bar.start()
        return self

    def __exit__(self, *args: object) -> None:
        if self.bar:
            self.bar.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.bar:
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)


def _print_summary(summary: ParseSummary, output_dir: Path) -> None:
    """The run in a few lines on stderr: a table on a terminal, plain lines otherwise (a
    pipeline's log; rich is not imported for them, a twentieth of a CT's run)."""
    names = list(summary.selections)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    rows = [
        ("instances", str(summary.instances)),
        ("series", str(summary.series)),
        ("volumes written", str(summary.volumes)),
        ("series not (fully) converted", str(summary.not_converted)),
        ("files skipped", str(len(summary.skipped))),
        ("damaged DICOM data", str(summary.damaged)),
        ("selections", shown or "none"),
        ("output", str(output_dir)),
    ]
    notes = [f"  skipped {item.path}: {item.reason}" for item in summary.skipped[:20]]
    if len(summary.skipped) > 20:
        notes.append(f"  ... and {len(summary.skipped) - 20} more (see {METADATA_FILE})")
    if not sys.stderr.isatty():
        width = max(len(label) for label, _ in rows) + 2
        lines = ["seriesflow process", *(f"  {label:<{width}}{value}" for label, value in rows)]
        print("\n".join([*lines, *notes]), file=sys.stderr)
        return
    from rich.table import Table

    table = Table(title="seriesflow process", show_header=False, box=None)
    for label, value in rows:
        table.add_row(label, value)
    err().print(table)
    for note in notes:
        err().print(note, highlight=False)


@_app.command("select")
def select_command(
    input_dir: InputOption = Path("/input"),
    output_dir: OutputOption = Path("/output"),
    rules: RulesOption = None,
    logs: LogsOption = None,
) -> None:
    """Select series from a parser's outputs in INPUT (the Series Selector operator)."""
    settings = _settings()
    _start_logging(logs, settings)
    try:
        with job_context(uuid.uuid4().hex):
            selections = run_selector_operator(input_dir, output_dir, _rules(rules, settings))
    except SeriesflowError as exc:
        _fail(exc.reason)
    out().print_json(json.dumps(selections))


@rules_app.command("check")
def rules_check(
    rules_file: Annotated[Path, typer.Argument(help="Rules file (JSON or YAML).")],
) -> None:
    """Validate a rules file; on error, say which rule is wrong."""
    try:
        parsed = load_rules_file(rules_file)
    except SeriesflowError as exc:
        _fail(exc.reason)
    names = [s.name for s in parsed.selections]
    if names:
        out().print(f"{rules_file}: valid, {len(names)} selection(s): {', '.join(names)}")
    else:
        out().print(f"{rules_file}: valid, empty (selects every converted series)")


@rules_app.command("explain")
def rules_explain(
    metadata: Annotated[Path, typer.Option("--metadata", "-m", help="A dicom-metadata.json file.")],
    rules: RulesOption = None,
    series_images: Annotated[
        Path | None,
        typer.Option(help="series-images.json (default: beside the metadata file)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    failures_only: Annotated[bool, typer.Option(help="Only conditions that failed.")] = False,
) -> None:
    """Say, for each series and each condition, why it matched or did not."""
    settings = _settings()
    try:
        document = load_metadata(metadata)
        images_path = series_images or metadata.with_name(SERIES_IMAGES_FILE)
        images = (
            load_series_images(images_path) if images_path.exists() else document.series_images()
        )
        explanation = explain(_rules(rules, settings), document, images)
    except SeriesflowError as exc:
        _fail(exc.reason)
    if as_json:
        out().print_json(explanation.model_dump_json(by_alias=True))
    else:
        print(render_explanation(explanation, failures_only=failures_only))


@_app.command()
def schema() -> None:
    """Print the JSON Schema of dicom-metadata.json."""
    print(json.dumps(json_schema(), indent=2))


@sample_app.command("brain-mr")
def sample_brain(
    output: OutputOption,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 1,
) -> None:
    """A brain MR study: localizer, T1, T1 post-contrast, T2, FLAIR, MPRAGE and an SR."""
    from shared.samples import describe, write_brain_mr_study

    paths = write_brain_mr_study(output, seed=seed)
    err().print(f"wrote {len(paths)} files to {output}")
    err().print(describe(paths), highlight=False)


@sample_app.command("ct")
def sample_ct(
    output: OutputOption,
    slices: Annotated[int, typer.Option(min=1)] = 300,
    size: Annotated[int, typer.Option(min=8)] = 512,
    seed: Annotated[int, typer.Option()] = 1,
) -> None:
    """One axial CT series, files in shuffled order (the benchmark's input)."""
    from shared.samples import write_ct_series

    paths = write_ct_series(output, slices=slices, size=size, seed=seed)
    err().print(f"wrote {len(paths)} files to {output}")


@cache
def full_app() -> typer.Typer:
    """The command line with every command: the operator commands above, plus the service,
    retention, quarantine and config commands, imported here (once)."""
    from seriesflow.config_commands import config_app
    from seriesflow.quarantine_commands import quarantine_app
    from seriesflow.retention_commands import retention_app
    from seriesflow.service_commands import register as register_service_commands

    register_service_commands(_app)
    _app.add_typer(retention_app, name="retention")
    _app.add_typer(quarantine_app, name="quarantine")
    _app.add_typer(config_app, name="config")
    return _app


def __getattr__(name: str) -> Any:
    """``seriesflow.cli.app`` is the whole command line (:func:`full_app`)."""
    if name == "app":
        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # Outputs are written under temporary names and renamed, so stopping here leaves no
    # half-written file under a final name.
    raise SystemExit(128 + signum)


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Container objects allocated (net) between two collections of the youngest generation.

Python's default, 700, suits programs whose objects die young. A DICOM header read at rest
is a few hundred element tuples that live until the series is converted: with the default,
reading 2,259 files of three studies ran 2,200 young, 200 middle and 11 full collections,
each full one walking every header read so far (a quarter of the CPU time); with 10,000,
190, 17 and 1. Garbage cycles are still collected, in batches of at most this many objects.
"""

ONE_SHOT_MIDDLE_THRESHOLD = 1_000
"""Young collections between two collections of the middle generation, in an operator
command (Python's default, 10, in the services).

An operator command ends once its folder is converted, and what it allocates mostly lives
until then: its headers at rest survive every young collection into the middle generation,
and each middle collection walked all of them again. With 10, a Philips folder of 681
files ran 28 young and 2 middle collections (40 ms, no object collected); with 1,000, 30
young and none (``process`` on it, 6 runs: 0.72 -> 0.705 s, polar 0.70 -> 0.68 s; peak
memory the same). A service, long-lived, keeps the default: garbage cycles its jobs leave
are collected as they were."""


def tune_garbage_collection(one_shot: bool = False) -> None:
    """Fewer cyclic garbage collections, none of them through what start-up loaded; for a
    ``one_shot`` (operator) command, middle-generation ones only every
    :data:`ONE_SHOT_MIDDLE_THRESHOLD` young ones.

    ``gc.freeze()`` moves every object that exists now (modules, classes, settings) into
    the permanent generation, which collections do not walk; reference counting still
    frees what is no longer used. Then the collector runs (:mod:`seriesflow.launch`
    pauses it while the command's modules are imported).
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    if one_shot:
        middle = ONE_SHOT_MIDDLE_THRESHOLD
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)
    gc.enable()


def main() -> None:
    import pydicom.config

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Tolerant reading: invalid values are kept as read and reported in the metadata,
    # not printed as warnings for every element of every file.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # An operator command needs none of the service commands' imports.
    one_shot = operator_command()
    app = _app if one_shot else full_app()
    tune_garbage_collection(one_shot)
    app()
