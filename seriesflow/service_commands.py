"""Service-mode commands: run one service, all of them, and look after them.

Each service module ``services/<name>/main.py`` has ``run(settings, stop)``; its settings
class lives in ``services/<name>/settings.py``. Services are imported only when run, so
operator mode never pays for them.
"""

from __future__ import annotations

import importlib
import signal
import threading
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from shared.errors import SeriesflowError
from shared.logs import configure_logging
from shared.settings import ServiceSettings

SERVICE_SETTINGS = {
    "receiver": "ReceiverSettings",
    "parser": "ParserSettings",
    "selector": "SelectorSettings",
    "exporter": "ExporterSettings",
    "config_api": "ConfigApiSettings",
}
COMMANDS = {name.replace("_", "-"): name for name in SERVICE_SETTINGS}

err = Console(stderr=True)
out = Console()


def _fail(message: str, status: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(status)


def _stop_event() -> threading.Event:
    """Set on SIGTERM or SIGINT, so a service finishes its current message and stops.

    Only the first signal sets it. A second one (Ctrl-C reaches every process of the
    terminal's group, and ``seriesflow up`` forwards a SIGTERM as well) may arrive while the
    first handler is inside ``Event.set``, holding the event's lock: setting it again there
    would wait for that lock forever, in the main thread (seen: a selector and an exporter
    of ``scripts/stack.sh`` still running after Ctrl-C)."""
    stop = threading.Event()
    signalled: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if signalled:
            return
        signalled.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _settings(cls: type[ServiceSettings]) -> ServiceSettings:
    try:
        return cls()
    except ValidationError as exc:
        problems = "; ".join(
            f"SERIESFLOW_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        _fail(f"invalid environment: {problems}")
        raise  # unreachable


def run_service(name: str, **overrides: Any) -> None:
    settings_module = importlib.import_module(f"services.{name}.settings")
    settings_cls: type[ServiceSettings] = getattr(settings_module, SERVICE_SETTINGS[name])
    settings = _settings(settings_cls)
    if overrides:
        settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_dir, stream=True, phi=settings.log_phi)
    main: Any = importlib.import_module(f"services.{name}.main")
    stop = _stop_event()
    try:
        main.run(settings, stop)
    except SeriesflowError as exc:
        _fail(exc.reason)


def register(app: typer.Typer) -> None:
    for command, name in COMMANDS.items():
        if name == "config_api":
            continue
        app.command(command, help=f"Run the {command} service (settings from SERIESFLOW_*).")(
            _make_runner(name)
        )
    app.command("config-api")(config_api)
    app.command("up")(up)
    app.command("status")(status)
    app.command("replay")(replay)


def _make_runner(name: str) -> Any:
    def runner() -> None:
        run_service(name)

    runner.__name__ = name
    return runner


def config_api(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default SERIESFLOW_API_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default SERIESFLOW_API_PORT, else 5000)."),
    ] = None,
) -> None:
    """Run the REST API for AE titles, sources, destinations, pipelines and jobs.

    Without SERIESFLOW_API_TOKEN(S) it serves loopback only, and refuses any other address.
    """
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    run_service("config_api", **overrides)


def up(
    scale: Annotated[
        list[str] | None,
        typer.Option(help="SERVICE=N replicas, e.g. --scale parser=2 (repeatable)."),
    ] = None,
) -> None:
    """Run every service as its own process, restarting any that exits."""
    from services.supervisor import SERVICES, Supervisor

    replicas = dict.fromkeys(SERVICES, 1)
    for item in scale or []:
        service, _, count = item.partition("=")
        if service not in replicas or not count.isdigit() or int(count) < 1:
            _fail(f"--scale takes SERVICE=N with SERVICE one of {', '.join(SERVICES)}", 2)
        replicas[service] = int(count)
    settings = _settings(ServiceSettings)
    configure_logging(settings.log_level, settings.log_dir, stream=True, phi=settings.log_phi)
    Supervisor(replicas).run(_stop_event())


def status(
    jobs: Annotated[int, typer.Option(help="How many of the latest jobs to show.")] = 20,
) -> None:
    """Queues (depth, consumers, dead letters) and the latest jobs with their stage."""
    from services.status import latest_jobs, queue_stats
    from shared.broker import Broker
    from shared.jobstore import JobStore
    from shared.store import ObjectStore

    settings = _settings(ServiceSettings)
    try:
        with Broker(settings, "status") as broker:
            broker.connect(attempts=2)
            stats = queue_stats(broker)
        store = ObjectStore(settings)
        latest = latest_jobs(JobStore(store), jobs)
        quarantined = JobStore(store).quarantined()
    except SeriesflowError as exc:
        _fail(exc.reason)
        return
    table = Table(title="queues")
    for column in ("queue", "messages", "consumers", "dead letters"):
        table.add_column(column)
    for s in stats:
        table.add_row(s.queue, str(s.messages), str(s.consumers), str(s.dead_letters))
    out.print(table)
    job_table = Table(title=f"latest {len(latest)} jobs")
    for column in ("job", "pipeline", "stage", "state", "exports", "updated"):
        job_table.add_column(column)
    for job in latest:
        job_table.add_row(
            job.job_id,
            job.pipeline or "?",
            job.stage,
            job.state,
            f"{job.exports_done}/{job.export_requests}",
            job.updated.isoformat(),
        )
    out.print(job_table)
    if quarantined:  # associations that ended without release (seriesflow quarantine)
        from seriesflow.quarantine_commands import quarantine_table

        out.print(quarantine_table(quarantined))


def replay(
    dead_letters: Annotated[
        str | None, typer.Option(help="Re-publish the dead letters of SERVICE.")
    ] = None,
    job: Annotated[str | None, typer.Option(help="Re-publish every stored event of JOB.")] = None,
) -> None:
    """Re-publish dead-lettered messages, or a job's events from the store."""
    from shared.broker import Broker
    from shared.keys import validate_id
    from shared.store import ObjectStore

    if (dead_letters is None) == (job is None):
        _fail("give exactly one of --dead-letters SERVICE or --job JOB", 2)
    settings = _settings(ServiceSettings)
    try:
        broker = Broker(settings, "replay")
        broker.connect(attempts=2)
        if dead_letters is not None:
            count = broker.replay_dead_letters(dead_letters)
            out.print(f"re-published {count} dead letter(s) of {dead_letters}")
        else:
            from services.replay import replay_job
            from shared.jobstore import JobStore

            count = replay_job(
                JobStore(ObjectStore(settings)), broker, validate_id(job or "", "job id")
            )
            out.print(f"re-published {count} event(s) of job {job}")
        broker.close()
    except SeriesflowError as exc:
        _fail(exc.reason)
