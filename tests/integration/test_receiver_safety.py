"""Issue 9's receiver failures, with real peers: nothing acknowledged is lost (SIGTERM of a
real receiver process, a stalled object store, SIGKILL during a broker outage), every data
set is checked before success, a bad Affected SOP Instance UID gets 0x0117, and duplicate
SOP Instance UIDs follow the AE title's policy with an audit.

pynetdicom plays a hostile SCU where dcmtk cannot produce the case (raw data set bytes, a
malformed Affected SOP Instance UID); everything runs on 127.0.0.1 and is bounded in time.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from services.receiver import statuses
from services.receiver.job import AssociationRecord
from shared import keys
from shared.broker import Broker
from shared.events import Envelope, JobReceived
from shared.jobstore import JobStore
from shared.manifest import JobManifest
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import free_port, wait_for_port
from .processes import ServiceProcess, service_environment
from .test_receiver import (
    ct,  # noqa: F401  (fixture)
    dataset_bytes,
    echoscu,
    incoming,
    observer,  # noqa: F401  (fixture)
    received,
    running,
    storescu,
    wait_for_messages,
    wait_until,
    write_config,
)

CT = str(CTImageStorage)


# -- a hostile SCU ------------------------------------------------------------------------


def association(port: int, called: str = "SERIESFLOW", dimse_timeout: float = 10.0) -> Any:
    ae = AE(ae_title="MODALITY")
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    return assoc


def raw_store(assoc: Any, instance_uid: str, data: bytes, sop_class: str = CT) -> int | None:
    """C-STORE ``data`` as it is, with ``instance_uid`` as it is (unvalidated); the status,
    or None if no response came (the association was aborted or timed out)."""
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)
    req = C_STORE()
    req.MessageID = 7
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class
    req._affected_sop_instance_uid = UID(instance_uid)
    req.DataSet = BytesIO(data)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if rsp is None else int(rsp.Status)


def store(assoc: Any, path_or_dataset: Any) -> int | None:
    ds = path_or_dataset
    if not isinstance(ds, pydicom.Dataset):
        ds = pydicom.dcmread(ds)
    status = assoc.send_c_store(ds)
    return int(status.Status) if "Status" in status else None


def job_manifest(store_: ObjectStore, message: Envelope) -> JobManifest:
    body = message.body
    assert isinstance(body, JobReceived)
    return JobManifest.model_validate(store_.get_json(body.manifest_key))


# -- #4: every data set is checked before success -----------------------------------------


def test_corrupt_data_sets_are_refused_with_a_reason_and_the_association_goes_on(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = pydicom.dcmread(ct[0])
    whole = dataset_bytes(ct[1].read_bytes())
    uid = str(pydicom.dcmread(ct[1]).SOPInstanceUID)
    no_uid = pydicom.dcmread(ct[2])
    no_uid_uid = str(no_uid.SOPInstanceUID)
    del no_uid.SOPInstanceUID
    no_uid.save_as(tmp_path / "no-uid.dcm", enforce_file_format=True)
    port = free_port()
    with running(settings, write_config(tmp_path / "c.yaml", port)) as receiver:
        assoc = association(port)
        assert raw_store(assoc, uid, os.urandom(10240)) == statuses.CANNOT_UNDERSTAND
        assert raw_store(assoc, uid, whole[:300]) == statuses.CANNOT_UNDERSTAND
        missing = dataset_bytes((tmp_path / "no-uid.dcm").read_bytes())
        assert raw_store(assoc, no_uid_uid, missing) == statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        assert raw_store(assoc, uid, whole) == statuses.SUCCESS, "the whole one is taken"
        assert store(assoc, good) == statuses.SUCCESS
        assoc.release()
        (message,) = wait_for_messages(observer, 1)
        manifest = job_manifest(receiver.job_store.objects, message)
        assert {i.sop_instance_uid for i in manifest.instances} == {uid, good.SOPInstanceUID}
        assert len(incoming(receiver.job_store.objects)) == 2, (
            "nothing stored for refused data sets"
        )
    reasons = [r.__dict__.get("reason", "") for r in caplog.records if r.msg == "instance refused"]
    assert any("cut off" in reason for reason in reasons), reasons
    assert any("no SOPInstanceUID" in reason for reason in reasons), reasons


# -- #5: a bad Affected SOP Instance UID gets 0x0117, never an abort -------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_malformed_affected_sop_instance_uid_is_answered_0x0117(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
) -> None:
    data = dataset_bytes(ct[0].read_bytes())
    port = free_port()
    with running(settings, write_config(tmp_path / "c.yaml", port)) as receiver:
        assoc = association(port, dimse_timeout=5)
        for bad in ("1." * 5120, "1" * 65, ""):
            assert raw_store(assoc, bad, data) == statuses.INVALID_SOP_INSTANCE, len(bad)
            assert assoc.is_established, "never an abort"
        assert store(assoc, ct[0]) == statuses.SUCCESS
        assoc.release()
        (message,) = wait_for_messages(observer, 1)
        assert len(job_manifest(receiver.job_store.objects, message).instances) == 1
        assert list(receiver.job_store.objects.list("quarantine/")) == []


# -- #1: an acknowledged instance is never lost ------------------------------------------


def receiver_process(
    settings: ServiceSettings,
    tmp_path: Path,
    port: int,
    name: str,
    config: Path | None = None,
    **env: str,
) -> ServiceProcess:
    config = config or write_config(tmp_path / f"{name}.yaml", port)
    environment = service_environment(settings, config, tmp_path)
    environment.pop("SERIESFLOW_PIPELINES")  # the receiver only needs the AE title's name
    environment.update({f"SERIESFLOW_{k.upper()}": v for k, v in env.items()})
    (tmp_path / name).mkdir(exist_ok=True)
    process = ServiceProcess("receiver", environment, tmp_path / name).start()
    try:
        wait_for_port(port, timeout=30)
    except Exception:
        process.stop()
        raise AssertionError("receiver did not start:\n" + process.log()) from None
    return process


def test_sigterm_drains_open_associations_and_quarantines_what_outlives_the_drain(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
) -> None:
    """A rolling restart in the middle of a study: the sender finishes, nothing is lost."""
    store_ = ObjectStore(settings)
    port = free_port()
    process = receiver_process(settings, tmp_path, port, "drain", drain_seconds="20")
    try:
        assoc = association(port)
        for path in ct[:2]:
            assert store(assoc, path) == statuses.SUCCESS
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        wait_until(lambda: echoscu(port).returncode != 0, 10, "new associations refused")
        for path in ct[2:]:
            assert store(assoc, path) == statuses.SUCCESS, "the open association goes on"
        assoc.release()
        assert process.process.wait(30) == 0, process.log()
    finally:
        process.stop()
    (message,) = wait_for_messages(observer, 1)
    assert len(job_manifest(store_, message).instances) == len(ct)
    assert "draining" in process.log()

    # An association that outlives the drain is ended; its instances are quarantined.
    port = free_port()
    process = receiver_process(settings, tmp_path, port, "short", drain_seconds="1")
    try:
        assoc = association(port)
        for path in ct[:2]:
            assert store(assoc, path) == statuses.SUCCESS
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0, process.log()
    finally:
        process.stop()
        assoc.abort()
    (key,) = store_.list("quarantine/")
    record = AssociationRecord.model_validate(store_.get_json(key))
    assert record.ended == "interrupted" and len(record.instances) == 2
    for ref in record.instances:
        assert store_.exists(ref.key), "acknowledged instances are kept"
    assert received(observer) == [], "an interrupted association starts no job"


class StallingProxy:
    """A TCP proxy to the S3 server that can hold every byte (``stalled``: a stalled object
    store), or only requests that write (``hold_puts``: reads and checks still answered)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.stalled = threading.Event()
        self.hold_puts = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                held = self.hold_puts.is_set() and data.startswith(b"PUT ")
                while not self._closed.is_set() and (
                    self.stalled.is_set() or (held and self.hold_puts.is_set())
                ):
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self.server.close()


@pytest.fixture
def stalling_proxy(settings: ServiceSettings) -> Iterator[StallingProxy]:
    proxy = StallingProxy(settings.s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_stalled_store_answers_out_of_resources_before_the_sender_gives_up(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
    stalling_proxy: StallingProxy,
) -> None:
    """The spool is a latency buffer: once a spooled instance has waited for the store
    longer than the store timeout, new instances are refused (0xA700) at once, while the
    sender still waits; the instance answered Success before is uploaded when the store
    is back, and is in the job."""
    port = free_port()
    config = write_config(tmp_path / "c.yaml", port)
    with running(
        settings, config, s3_endpoint=stalling_proxy.endpoint, store_timeout_seconds=1.0
    ) as receiver:
        assoc = association(port, dimse_timeout=5)  # the sender gives up after 5 s
        assert store(assoc, ct[0]) == statuses.SUCCESS
        wait_until(lambda: receiver.spool.state().files == 0, 10, "first instance uploaded")
        stalling_proxy.stalled.set()
        assert store(assoc, ct[1]) == statuses.SUCCESS, "spooled: no upload is late yet"
        wait_until(lambda: (receiver.spool.state().oldest_seconds or 0) > 1.2, 5, "an upload late")
        started = time.monotonic()
        assert store(assoc, ct[2]) == statuses.OUT_OF_RESOURCES, "answered, not aborted"
        assert time.monotonic() - started < 1.0, "refused at once, not after a wait"
        assert receiver.spool.state().files == 1, "the refused instance is not spooled"
        stalling_proxy.stalled.clear()
        wait_until(lambda: receiver.spool.state().files == 0, 20, "late upload completed")
        assert store(assoc, ct[3]) == statuses.SUCCESS
        assoc.release()
        (message,) = wait_for_messages(observer, 1)
        manifest = job_manifest(receiver.job_store.objects, message)
        sent = [str(pydicom.dcmread(p).SOPInstanceUID) for p in ct[:4]]
        assert [i.sop_instance_uid for i in manifest.instances] == [sent[0], sent[1], sent[3]]
        for ref in manifest.instances:
            assert receiver.job_store.objects.exists(ref.key), "every instance is in the store"
        refused = keys.incoming_instance(manifest.associations[0], sent[2])
        assert not receiver.job_store.objects.exists(refused), "the refused one never is"


def test_after_sigkill_during_a_broker_outage_the_restarted_receiver_recovers_at_start(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
) -> None:
    store_ = ObjectStore(settings)
    port = free_port()
    broker_down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    process = receiver_process(settings, tmp_path, port, "outage", amqp_url=broker_down)
    try:
        result = storescu(port, ct)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_until(lambda: list(store_.list("jobs/")) != [], 15, "manifest written")
    finally:
        process.kill()
    assert received(observer) == []
    process = receiver_process(settings, tmp_path, port, "restarted")
    try:
        # Well before the 300 s sweep and the 60 s recovery grace.
        (message,) = wait_for_messages(observer, 1, timeout=20)
    finally:
        process.stop()
    assert len(job_manifest(store_, message).instances) == len(ct)


def test_an_association_open_when_the_receiver_was_killed_is_quarantined_not_deleted(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
) -> None:
    store_ = ObjectStore(settings)
    port = free_port()
    config = write_config(tmp_path / "ttl.yaml", port, incoming_ttl=2)
    process = receiver_process(settings, tmp_path, port, "killed", config)
    assoc = association(port)
    try:
        for path in ct[:2]:
            assert store(assoc, path) == statuses.SUCCESS
        process.kill()
    finally:
        process.stop()
        assoc.abort()
    time.sleep(2.5)  # the orphan is now older than incoming-ttl
    process = receiver_process(
        settings, tmp_path, port, "after", config, quarantine_check_seconds="0.3"
    )
    try:
        wait_until(lambda: list(store_.list("quarantine/")) != [], 20, "orphan quarantined")
        (key,) = store_.list("quarantine/")
        record = AssociationRecord.model_validate(store_.get_json(key))
        assert record.ended == "orphaned" and len(record.instances) == 2
        assert (record.called_ae_title, record.calling_ae_title) == ("SERIESFLOW", "MODALITY")
        JobStore(store_).request_quarantine_release(record.association_id)
        (message,) = wait_for_messages(observer, 1, timeout=20)
    finally:
        process.stop()
    assert len(job_manifest(store_, message).instances) == 2


# -- #8: duplicates -------------------------------------------------------------------------


def test_duplicates_follow_the_policy_within_and_across_associations_with_an_audit(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = pydicom.dcmread(ct[0])
    changed = pydicom.dcmread(ct[0])
    changed.SeriesDescription = "a different copy"
    third = pydicom.dcmread(ct[0])
    third.SeriesDescription = "a third copy"
    other = pydicom.dcmread(ct[1])
    port = free_port()
    ae_titles = [
        {"ae-title": "KEEP", "pipeline": "keep", "timeout": 1},
        {"ae-title": "OVERWRITE", "pipeline": "over", "timeout": 1, "duplicates": "overwrite"},
        {"ae-title": "REJECT", "pipeline": "reject", "timeout": 1, "duplicates": "reject"},
    ]
    expected = {"KEEP": statuses.SUCCESS, "OVERWRITE": statuses.SUCCESS}
    expected["REJECT"] = statuses.DUPLICATE_SOP_INSTANCE
    with running(settings, write_config(tmp_path / "c.yaml", port, ae_titles)) as receiver:
        for called, status in expected.items():
            assoc = association(port, called)
            assert store(assoc, first) == statuses.SUCCESS
            assert store(assoc, first) == statuses.SUCCESS, "an identical copy is no conflict"
            assert store(assoc, changed) == status, f"{called}: within one association"
            assoc.release()
            assoc = association(port, called)  # another association of the same job
            assert store(assoc, other) == statuses.SUCCESS
            assert store(assoc, third) == status, f"{called}: across associations"
            assoc.release()
        messages = {m.routing_key: m for m in wait_for_messages(observer, 3, timeout=20)}
        time.sleep(1.5)
        assert received(observer) == [], "one job per AE title"
        content = {}
        for pipeline in ("keep", "over", "reject"):
            manifest = job_manifest(
                receiver.job_store.objects, messages[f"job.received.{pipeline}"]
            )
            assert len(manifest.associations) == 2
            (ref,) = [i for i in manifest.instances if i.sop_instance_uid == first.SOPInstanceUID]
            assert len(manifest.instances) == 2, "each SOP Instance UID once"
            ds = pydicom.dcmread(BytesIO(receiver.job_store.objects.get_bytes(ref.key)))
            content[pipeline] = ds.get("SeriesDescription")
            conflicts = [
                c
                for a in manifest.associations
                for c in AssociationRecord.model_validate(
                    receiver.job_store.objects.get_json(keys.association_record(a))
                ).duplicates
            ]
            assert len(conflicts) == 2, f"{pipeline}: every conflict is stored"
            assert {c.sop_instance_uid for c in conflicts} == {first.SOPInstanceUID}
        assert content["over"] == "a third copy"
        assert content["keep"] == content["reject"] == first.get("SeriesDescription")
    audited = [r for r in caplog.records if "different content" in r.getMessage()]
    assert len(audited) == 6
    assert {r.__dict__["outcome"] for r in audited} == {"kept-first", "overwritten", "rejected"}


def test_a_first_copy_already_uploaded_is_read_back_once_however_often_it_is_sent_again(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    ct: list[Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A study sent again while its job forms: the first copy's digest is computed from
    the store once, not once per copy (each read is a GET on the association's thread)."""
    first = pydicom.dcmread(ct[0])
    port = free_port()
    ae_titles = [{"ae-title": "KEEP", "pipeline": "keep", "grouping": "study", "timeout": 3}]
    with running(settings, write_config(tmp_path / "c.yaml", port, ae_titles)) as receiver:
        assoc = association(port, "KEEP")
        assert store(assoc, first) == statuses.SUCCESS
        assoc.release()
        objects, deadline = receiver.job_store.objects, time.monotonic() + 10
        while not (uploaded := [k for k in objects.list("incoming/") if k.endswith(".dcm")]):
            assert time.monotonic() < deadline, "the first copy was never uploaded"
            time.sleep(0.05)
        (key,) = uploaded
        while receiver.spool.read(key) is not None:  # out of the spool: read from the store
            assert time.monotonic() < deadline, "the first copy stays in the spool"
            time.sleep(0.05)
        reads: list[str] = []
        read = receiver.job_store.instance_bytes

        def counted(key: str) -> bytes:
            reads.append(key)
            return read(key)

        monkeypatch.setattr(receiver.job_store, "instance_bytes", counted)
        for _ in range(3):
            assoc = association(port, "KEEP")
            assert store(assoc, first) == statuses.SUCCESS
            assoc.release()
        assert reads == [key]
        (message,) = wait_for_messages(observer, 1, timeout=20)
        manifest = job_manifest(receiver.job_store.objects, message)
        assert len(manifest.associations) == 4 and len(manifest.instances) == 1
