"""``seriesflow retention list|purge``: what the store holds of jobs, and deleting what is due.

The policy comes from ``SERIESFLOW_RETENTION_COMPLETED`` and ``SERIESFLOW_RETENTION_FAILED``
(docs/retention.md); ``--completed`` / ``--failed`` override them for one run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from seriesflow.service_commands import _fail, _settings, out
from shared.durations import parse_duration
from shared.errors import SeriesflowError
from shared.settings import ServiceSettings

if TYPE_CHECKING:  # the store client is imported when a command runs, not by every command
    from shared.retention import HeldJob, RetentionPolicy

retention_app = typer.Typer(
    help="See and purge the jobs the object store holds (docs/retention.md).",
    no_args_is_help=True,
)

CompletedOption = Annotated[
    str | None,
    typer.Option(help="Keep completed jobs this long (e.g. 7d, 36h); default from the env."),
]
FailedOption = Annotated[
    str | None,
    typer.Option(help="Keep failed or unfinished jobs this long; default from the env."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _policy(
    settings: ServiceSettings, completed: str | None, failed: str | None
) -> RetentionPolicy:
    from shared.retention import RetentionPolicy

    policy = RetentionPolicy.from_settings(settings)
    try:
        return RetentionPolicy(
            parse_duration(completed) if completed is not None else policy.completed,
            parse_duration(failed) if failed is not None else policy.failed,
        )
    except ValueError as exc:
        _fail(str(exc), 2)
        raise  # unreachable


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _table(title: str, jobs: list[HeldJob]) -> Table:
    table = Table(title=title)
    table.add_column("job", no_wrap=True, min_width=32)  # whole: it is what replay takes
    table.add_column("pipeline", overflow="fold")
    for column in ("state", "age", "deleted in"):  # the time itself: --json
        table.add_column(column, no_wrap=True, min_width=len(column))
    for job in jobs:
        table.add_row(
            job.job_id,
            job.pipeline or "?",
            job.state,
            _human(job.age_seconds),
            "due" if job.due else _human(job.delete_after),
        )
    return table


@retention_app.command("list")
def list_held(
    completed: CompletedOption = None, failed: FailedOption = None, as_json: JsonOption = False
) -> None:
    """Every job the store holds, with its state and when retention deletes it."""
    from shared.jobstore import JobStore
    from shared.retention import held_jobs
    from shared.store import ObjectStore

    settings = _settings(ServiceSettings)
    policy = _policy(settings, completed, failed)
    try:
        jobs = held_jobs(JobStore(ObjectStore(settings)), policy)
    except SeriesflowError as exc:
        _fail(exc.reason)
        return
    if as_json:
        out.print_json(json.dumps([j.to_json() for j in jobs]))
        return
    due = sum(1 for j in jobs if j.due)
    out.print(
        f"completed jobs kept {_human(policy.completed or None)}, failed or unfinished "
        f"{_human(policy.failed or None)}; {len(jobs)} job(s) held, {due} due"
    )
    out.print(_table("jobs held", jobs))


@retention_app.command("purge")
def purge_due(
    dry_run: Annotated[
        bool, typer.Option(help="Say what would be deleted; delete nothing.")
    ] = False,
    completed: CompletedOption = None,
    failed: FailedOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete every job whose retention time is up: instances, outputs, events, manifest."""
    from shared.jobstore import JobStore
    from shared.retention import purge
    from shared.store import ObjectStore

    settings = _settings(ServiceSettings)
    policy = _policy(settings, completed, failed)
    try:
        report = purge(JobStore(ObjectStore(settings)), policy, dry_run=dry_run)
    except SeriesflowError as exc:
        _fail(exc.reason)
        return
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "dryRun": dry_run,
                    "purged": [j.to_json() for j in report.purged],
                    "deletedObjects": report.deleted_objects,
                    "errors": report.errors,
                }
            )
        )
    else:
        verb = "would delete" if dry_run else "deleted"
        out.print(
            f"{verb} {len(report.purged)} job(s)"
            + ("" if dry_run else f", {report.deleted_objects} object(s)")
        )
        if report.purged:
            out.print(_table(f"jobs {verb}", report.purged))
    for error in report.errors:
        out.print(f"not deleted: {error}")
    if report.errors:
        raise typer.Exit(1)
