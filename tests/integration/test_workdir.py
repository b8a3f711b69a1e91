"""Work folders (issue 9, 8): the parser's temporary folders hold patient data; a SIGKILLed
process left them behind for good. They now live under the work directory and the next
start removes what a killed process left. The exporter keeps no folder at all (issue 10):
the files it sends are held in memory.

Real ``seriesflow parser`` / ``seriesflow exporter`` processes, a real S3 server, RabbitMQ
and dcmtk's storescp; each process is killed with SIGKILL while its folder exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.exporter.handlers import BINDINGS as EXPORTER_BINDINGS
from services.parser.handlers import BINDINGS as PARSER_BINDINGS
from shared.broker import Broker
from shared.events import Envelope, ExportRequested, new_id
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from shared.workdir import make_work_folder, sweep_work_folders

from .infra import dcmtk_available
from .processes import ServiceProcess, StoreSCP, service_environment, wait_until
from .test_parser_selector import brain_study, submit, write_pipeline


def folders(work: Path, kind: str) -> set[Path]:
    return set(work.glob(f"seriesflow-{kind}-*")) if work.is_dir() else set()


def kill_once_a_folder_exists(process: ServiceProcess, work: Path, kind: str) -> set[Path]:
    """SIGKILL ``process`` as soon as it has a work folder of ``kind``; the folders left."""
    deadline = time.monotonic() + 60
    while not folders(work, kind):
        assert process.alive(), process.log()[-2000:]
        assert time.monotonic() < deadline, "no work folder appeared"
        time.sleep(0.005)
    process.kill()
    left = folders(work, kind)
    assert left, "the killed process's folder should still be there"
    return left


def kill_and_start_again(
    service: str, env: dict[str, str], work: Path, kind: str
) -> tuple[set[Path], ServiceProcess]:
    """Start ``service``, SIGKILL it while it has a work folder, start it again; the folders
    the killed process left, and the new process (stop it)."""
    first = ServiceProcess(service, env, work.parent).start()
    try:
        left = kill_once_a_folder_exists(first, work, kind)
    finally:
        first.kill()
    return left, ServiceProcess(service, env, work.parent).start()


@pytest.fixture
def store(settings: ServiceSettings) -> ObjectStore:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store


@pytest.fixture
def broker(settings: ServiceSettings) -> Broker:
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    return broker


def test_a_killed_parsers_folder_is_removed_at_the_next_start(
    settings: ServiceSettings, store: ObjectStore, broker: Broker, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    pipelines = write_pipeline(tmp_path / "pipelines", "brain", "mhd", [])
    config = tmp_path / "seriesflow.yaml"
    config.write_text("dicom: {}\n")
    env = service_environment(settings, config, pipelines) | {"SERIESFLOW_WORK_DIR": str(work)}
    broker.declare_service_queue("parser", PARSER_BINDINGS, notices=True)
    job = submit(store, broker, brain_study(tmp_path / "study", seed=3), "brain")
    left, second = kill_and_start_again("parser", env, work, "parser")
    try:
        wait_until(lambda: not (left & folders(work, "parser")), 30, "the folder to be swept")
        wait_until(
            lambda: store.exists(f"jobs/{job.job_id}/events/parsed.json"), 60, "the job parsed"
        )
        wait_until(lambda: not folders(work, "parser"), 10, "the job's own folder removed")
    finally:
        second.stop()
    assert "work folders of stopped processes removed" in second.log()


@pytest.mark.skipif(not dcmtk_available("storescp"), reason="dcmtk is not installed")
def test_a_killed_exporter_leaves_no_patient_data_on_disk_and_the_restart_exports(
    settings: ServiceSettings, store: ObjectStore, broker: Broker, tmp_path: Path
) -> None:
    """The exporter holds the files it is about to send in memory only (issue 10): killed
    in the middle of an export it leaves no file in its work or temporary folder, and the
    next start completes the export."""
    work = tmp_path / "work"
    work.mkdir()
    scp = StoreSCP(tmp_path / "received").start()
    config = tmp_path / "seriesflow.yaml"
    config.write_text(
        "dicom:\n  scu:\n    ae-title: SERIESFLOW\n    destinations:\n"
        f"      - name: pacs\n        host-ip: 127.0.0.1\n        port: {scp.port}\n"
        f"        ae-title: {scp.ae_title}\n"
    )
    env = service_environment(settings, config, tmp_path) | {
        "SERIESFLOW_WORK_DIR": str(work),
        "TMPDIR": str(work),
    }
    broker.declare_service_queue("exporter", EXPORTER_BINDINGS)
    job = submit(store, broker, brain_study(tmp_path / "study", seed=4), "brain")
    request = ExportRequested(
        export_id=new_id(),
        destination="pacs",
        pipeline="brain",
        selection="all",
        instance_keys=[i.key for i in job.manifest.instances],
    )
    broker.publish(Envelope.wrap(request, job_id=job.job_id, producer="test", event_id=new_id()))
    first = ServiceProcess("exporter", env, tmp_path).start()
    try:
        wait_until(lambda: "export attempt started" in first.log(), 60, "the export to start")
    finally:
        first.kill()
    assert [p for p in work.rglob("*") if p.is_file()] == [], "no file left by the exporter"
    second = ServiceProcess("exporter", env, tmp_path).start()
    try:
        wait_until(
            lambda: any(k.endswith(".json") and "exported-" in k for k in store.list("jobs/")),
            60,
            "the export to complete",
        )
    finally:
        second.stop()
        scp.stop()
    assert len(scp.files()) >= len(job.manifest.instances)


def test_folders_of_running_processes_and_other_hosts_are_kept(tmp_path: Path) -> None:
    mine = make_work_folder("parser", tmp_path)
    foreign = tmp_path / "seriesflow-parser-otherhost.1.1.abc"
    foreign.mkdir()
    unknown = tmp_path / "seriesflow-parser-x7k2"
    unknown.mkdir()
    assert sweep_work_folders(tmp_path) == 0
    assert mine.is_dir() and foreign.is_dir() and unknown.is_dir()
