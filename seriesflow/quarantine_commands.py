"""``seriesflow quarantine list|release|delete``: instances acknowledged on associations
that ended without A-RELEASE (docs/receiver.md, "Quarantine")."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from seriesflow.service_commands import _fail, _settings, out
from shared.errors import SeriesflowError
from shared.keys import validate_id
from shared.settings import ServiceSettings

if TYPE_CHECKING:  # the store client is imported when a command runs, not by every command
    from shared.jobstore import JobStore, QuarantinedAssociation

quarantine_app = typer.Typer(
    help="See, release as a job, or delete quarantined associations (docs/receiver.md).",
    no_args_is_help=True,
)
T = TypeVar("T")
AssociationArgument = Annotated[str, typer.Argument(help="The association ID (32 hex digits).")]


def _jobs() -> JobStore:
    from shared.jobstore import JobStore
    from shared.store import ObjectStore

    return JobStore(ObjectStore(_settings(ServiceSettings)))


def quarantine_table(held: list[QuarantinedAssociation]) -> Table:
    table = Table(title=f"quarantine: {len(held)} association(s)")
    table.add_column("association", no_wrap=True, min_width=32)
    for column in ("ended", "since", "called", "calling", "instances", "release"):
        table.add_column(column)
    for q in held:
        table.add_row(
            q.association_id,
            q.ended,
            q.quarantined_at.isoformat(timespec="seconds"),
            q.called_ae_title,
            q.calling_ae_title,
            str(q.instances),
            "requested" if q.release_requested else "",
        )
    return table


@quarantine_app.command("list")
def list_quarantine(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Quarantined associations, oldest first."""
    try:
        held = _jobs().quarantined()
    except SeriesflowError as exc:
        _fail(exc.reason)
        return
    if as_json:
        rows = [{**q.__dict__, "quarantined_at": q.quarantined_at.isoformat()} for q in held]
        out.print_json(json.dumps(rows))
    else:
        out.print(quarantine_table(held))


def _on_quarantined(association: str, action: Callable[[JobStore, str], T]) -> T:
    """``action`` on a quarantined association, or a clear error and exit status 1."""
    from shared.store import ObjectNotFoundError

    try:
        return action(_jobs(), validate_id(association, "association id"))
    except ObjectNotFoundError:
        _fail(f"association {association} is not quarantined (released, deleted, or never)")
    except SeriesflowError as exc:
        _fail(exc.reason)
    raise AssertionError("unreachable")


@quarantine_app.command("release")
def release(association: AssociationArgument) -> None:
    """Release a quarantined association's instances as a job (the receiver does it)."""
    held = _on_quarantined(association, lambda jobs, a: jobs.request_quarantine_release(a))
    out.print(
        f"release of {held.instances} instance(s) of association {association} requested; "
        "the receiver starts the job within SERIESFLOW_QUARANTINE_CHECK_SECONDS"
    )


@quarantine_app.command("delete")
def delete(association: AssociationArgument) -> None:
    """Delete a quarantined association's instances and record."""
    deleted = _on_quarantined(association, lambda jobs, a: jobs.delete_quarantined(a))
    out.print(f"deleted {deleted} object(s) of association {association}")
