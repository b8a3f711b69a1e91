"""The receiver against real parts: dcmtk echoscu/storescu and pynetdicom as modalities,
SeaweedFS as the store, RabbitMQ (own vhost) as the broker.

Each test starts a Receiver in this process on a free port with its own configuration file.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from services.receiver import statuses
from services.receiver.association import new_association_id
from services.receiver.job import AssociationRecord, job_id_for
from services.receiver.main import Receiver
from services.receiver.settings import ReceiverSettings
from shared import keys
from shared.broker import Broker
from shared.errors import InvalidInputError
from shared.events import Envelope, JobReceived, event_id
from shared.manifest import JobManifest
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import dcmtk, dcmtk_available, free_port

OBSERVER = "receiver-test"
pytestmark = pytest.mark.skipif(
    not dcmtk_available("storescu"),
    reason="dcmtk is not installed",
)


# -- helpers ------------------------------------------------------------------------------


def write_config(
    path: Path, port: int, ae_titles: list[dict[str, Any]] | None = None, **scp: Any
) -> Path:
    scp_section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "ae-titles": ae_titles or [{"ae-title": "SERIESFLOW", "pipeline": "ct"}],
        "reject-unknown-sources": False,
    }
    scp_section.update({k.replace("_", "-"): v for k, v in scp.items()})
    path.write_text(yaml.safe_dump({"dicom": {"scp": scp_section}}))
    return path


@contextmanager
def running(settings: ServiceSettings, config: Path, **overrides: Any) -> Iterator[Receiver]:
    values = {
        **settings.model_dump(),
        "config": config,
        "association_check_seconds": 0.2,
        "store_attempts_at_start": 1,
        **overrides,
    }
    receiver = Receiver(ReceiverSettings(**values))
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def observer(settings: ServiceSettings) -> Iterator[Broker]:
    """A queue bound to every job.received, declared before anything is published."""
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    broker.declare_service_queue(OBSERVER, ["job.received.#"])
    try:
        yield broker
    finally:
        broker.close()


def received(broker: Broker) -> list[Envelope]:
    envelopes: list[Envelope] = []
    while True:
        method, _, body = broker.channel.basic_get(f"seriesflow.{OBSERVER}", auto_ack=True)
        if method is None:
            return envelopes
        envelopes.append(Envelope.from_bytes(body))


def wait_for_messages(broker: Broker, count: int, timeout: float = 15.0) -> list[Envelope]:
    envelopes: list[Envelope] = []
    deadline = time.monotonic() + timeout
    while len(envelopes) < count and time.monotonic() < deadline:
        envelopes += received(broker)
        time.sleep(0.05)
    assert len(envelopes) >= count, f"{len(envelopes)} job.received messages, expected {count}"
    return envelopes


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        time.sleep(0.05)


def storescu(
    port: int, files: list[Path], calling: str = "MODALITY", called: str = "SERIESFLOW"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("storescu"), "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )


def echoscu(
    port: int, calling: str = "MODALITY", called: str = "SERIESFLOW"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part-10 file, after its File Meta Information group."""
    assert part10[128:132] == b"DICM"
    assert part10[132:138] == b"\x02\x00\x00\x00UL", "file meta starts with its group length"
    meta_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + meta_length :]


def incoming(store: ObjectStore) -> list[str]:
    return [k for k in store.list("incoming/") if k.endswith(".dcm")]


def held(receiver: Receiver, uids: list[str]) -> list[str]:
    """Those of ``uids`` (answered Success) that are durably held: a file in the receiver's
    spool, or else (an upload removes the file only once the store has it) in the store."""
    spooled = receiver.spool.slot / "incoming"
    found = []
    for uid in uids:
        if any(spooled.glob(f"*/{uid}.dcm")) or any(
            key.endswith(f"/{uid}.dcm") for key in incoming(receiver.job_store.objects)
        ):
            found.append(uid)
    return found


def scu_association(port: int, called: str = "SERIESFLOW", calling: str = "MODALITY") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    return assoc


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return sorted(write_ct_series(tmp_path / "ct", slices=5, size=32))


# -- C-ECHO, sources, called AE titles --------------------------------------------------


def test_echo_succeeds_and_is_refused_when_verification_is_disabled(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    port = free_port()
    with running(settings, write_config(tmp_path / "on.yaml", port)):
        result = echoscu(port)
        assert result.returncode == 0, result.stdout + result.stderr
    port = free_port()
    config = write_config(tmp_path / "off.yaml", port, verification={"enabled": False})
    with running(settings, config):
        result = echoscu(port)
        assert result.returncode != 0
        assert "No Acceptable Presentation Contexts" in result.stdout + result.stderr


def test_called_ae_titles_and_sources_are_checked_at_association(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "sources.yaml",
        port,
        ae_titles=[
            {"ae-title": "SERIESFLOW", "pipeline": "ct"},
            {"ae-title": "RESEARCH", "pipeline": "research"},
        ],
        reject_unknown_sources=True,
        sources=[
            {"host-ip": "localhost", "ae-title": "MODALITY"},  # a host name, resolved
            {"host-ip": "10.255.255.1", "ae-title": "FARAWAY"},  # not this machine
        ],
    )
    with running(settings, config) as receiver:
        unknown_called = storescu(port, ct[:1], called="NOBODY")
        assert unknown_called.returncode != 0
        assert "Called AE Title Not Recognized" in unknown_called.stdout + unknown_called.stderr
        unknown_calling = storescu(port, ct[:1], calling="INTRUDER")
        assert unknown_calling.returncode != 0
        assert "Calling AE Title Not Recognized" in unknown_calling.stdout + unknown_calling.stderr
        wrong_address = storescu(port, ct[:1], calling="FARAWAY")
        assert wrong_address.returncode != 0
        assert "Calling AE Title Not Recognized" in wrong_address.stdout + wrong_address.stderr
        assert incoming(receiver.job_store.objects) == []
        assert received(observer) == []

        # A known source, to each of two AE titles: each association is a job of its pipeline.
        for called in ("SERIESFLOW", "RESEARCH"):
            result = storescu(port, ct[:1], called=called)
            assert result.returncode == 0, result.stdout + result.stderr
        messages = wait_for_messages(observer, 2)
        assert sorted(m.routing_key for m in messages) == [
            "job.received.ct",
            "job.received.research",
        ]

    port = free_port()
    config = write_config(tmp_path / "open.yaml", port, reject_unknown_sources=False)
    with running(settings, config):
        result = storescu(port, ct[:1], calling="ANYBODY")
        assert result.returncode == 0, result.stdout + result.stderr


def test_an_ae_title_without_pipeline_is_a_configuration_error(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", free_port(), ae_titles=[{"ae-title": "LOST"}])
    with pytest.raises(InvalidInputError, match="'LOST' has no pipeline"):
        Receiver(ReceiverSettings(**{**settings.model_dump(), "config": config}))


# -- storing and releasing ------------------------------------------------------------


def test_a_series_is_stored_as_received_and_its_job_published(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    port = free_port()
    with running(settings, write_config(tmp_path / "c.yaml", port)) as receiver:
        result = storescu(port, ct)
        assert result.returncode == 0, result.stdout + result.stderr
        (message,) = wait_for_messages(observer, 1)
        time.sleep(0.3)
        assert received(observer) == [], "published once"
        store = receiver.job_store.objects

        assert message.routing_key == "job.received.ct"
        assert message.event_id == event_id(message.job_id, "received")
        body = message.body
        assert isinstance(body, JobReceived)
        assert (body.called_ae_title, body.calling_ae_title) == ("SERIESFLOW", "MODALITY")
        assert body.instance_count == len(ct)
        assert body.manifest_key == keys.manifest(message.job_id)
        manifest = JobManifest.model_validate(store.get_json(body.manifest_key))
        assert manifest.pipeline == "ct"
        assert (manifest.called_ae_title, manifest.calling_ae_title) == ("SERIESFLOW", "MODALITY")
        assert manifest.calling_host == "127.0.0.1"
        (association,) = manifest.associations
        stored = Envelope.from_bytes(store.get_bytes(keys.event(message.job_id, "received")))
        assert stored == message

        sent = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in ct}
        assert {i.sop_instance_uid for i in manifest.instances} == set(sent)
        for ref in manifest.instances:
            assert ref.key == keys.incoming_instance(association, ref.sop_instance_uid)
            data = store.get_bytes(ref.key)
            original = sent[ref.sop_instance_uid].read_bytes()
            assert dataset_bytes(data) == dataset_bytes(original), "data set as received"
            ds = pydicom.dcmread(BytesIO(data))
            assert ds.file_meta.TransferSyntaxUID == ref.transfer_syntax_uid
            assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
            assert ds.SeriesInstanceUID == ref.series_instance_uid
            assert ds.StudyInstanceUID == ref.study_instance_uid
        record = AssociationRecord.model_validate(
            store.get_json(keys.association_record(association))
        )
        assert record.job_id == message.job_id
        assert record.published


def test_store_down_answers_failure_not_success(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    port = free_port()
    unreachable = f"127.0.0.1:{free_port()}"
    with running(settings, write_config(tmp_path / "c.yaml", port), s3_endpoint=unreachable):
        result = storescu(port, ct[:2])
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "Received Store Response (Refused: OutOfResources)" in output, output
        time.sleep(0.5)
        assert received(observer) == []


def test_an_aborted_association_starts_no_job_and_its_instances_are_quarantined(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    port = free_port()
    with running(settings, write_config(tmp_path / "c.yaml", port)) as receiver:
        assoc = scu_association(port)
        answered = []
        for path in ct[:2]:
            ds = pydicom.dcmread(path)
            assert assoc.send_c_store(ds).Status == statuses.SUCCESS
            answered.append(str(ds.SOPInstanceUID))
            assert held(receiver, answered) == answered, "held before success was answered"
        assoc.abort()
        wait_until(
            lambda: list(receiver.job_store.objects.list("quarantine/")) != [], 10, "quarantined"
        )
        time.sleep(0.3)
        assert len(incoming(receiver.job_store.objects)) == 2, "acknowledged instances are kept"
        (key,) = receiver.job_store.objects.list("quarantine/")
        record = AssociationRecord.model_validate(receiver.job_store.objects.get_json(key))
        assert record.ended == "aborted" and len(record.instances) == 2
        assert record.job_id is None
        assert list(receiver.job_store.objects.list("jobs/")) == []
        assert received(observer) == []


def test_associations_to_an_ae_title_with_a_timeout_form_one_job(
    settings: ServiceSettings, observer: Broker, tmp_path: Path
) -> None:
    first = sorted(write_ct_series(tmp_path / "a", slices=3, size=32, seed=1))
    second = sorted(write_ct_series(tmp_path / "b", slices=2, size=32, seed=2))
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        port,
        ae_titles=[{"ae-title": "SERIESFLOW", "pipeline": "ct", "timeout": 2}],
    )
    with running(settings, config) as receiver:
        assert storescu(port, first).returncode == 0
        time.sleep(0.5)
        second_started = time.monotonic()
        assert storescu(port, second).returncode == 0
        # The quiet period counts from the last instance, so nothing is released before
        # two seconds have passed since the second association started.
        time.sleep(max(0.0, second_started + 1.5 - time.monotonic()))
        assert received(observer) == [], "released before the timeout"
        (message,) = wait_for_messages(observer, 1)
        time.sleep(0.5)
        assert received(observer) == [], "published once"
        body = message.body
        assert isinstance(body, JobReceived)
        assert body.instance_count == 5
        manifest = JobManifest.model_validate(
            receiver.job_store.objects.get_json(body.manifest_key)
        )
        assert len(manifest.associations) == 2
        sent = {str(pydicom.dcmread(p).SOPInstanceUID) for p in first + second}
        assert {i.sop_instance_uid for i in manifest.instances} == sent


# -- instances refused, ignored, repeated ---------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_store_statuses_for_bad_ignored_and_repeated_instances(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        port,
        ae_titles=[
            {"ae-title": "KEEPFIRST", "pipeline": "keep"},
            {"ae-title": "OVERWRITE", "pipeline": "replace", "overwrite-same-instance": True},
            {"ae-title": "NOCT", "pipeline": "noct", "ignored-sop-classes": [str(CTImageStorage)]},
        ],
    )
    with running(settings, config) as receiver:
        store = receiver.job_store.objects
        first = pydicom.dcmread(ct[0])
        again = pydicom.dcmread(ct[0])
        again.SeriesDescription = "second copy"

        bad_uid = pydicom.dcmread(ct[1])
        bad_uid.SOPInstanceUID = "1.2.03.4"  # a component with a leading zero
        mismatch = pydicom.dcmread(ct[2])
        mismatch.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # the file meta still says CT
        mismatch.save_as(tmp_path / "mismatch.dcm")

        assoc = scu_association(port, called="KEEPFIRST")
        assert assoc.send_c_store(first).Status == statuses.SUCCESS
        assert assoc.send_c_store(again).Status == statuses.SUCCESS
        assert assoc.send_c_store(bad_uid).Status == statuses.INVALID_SOP_INSTANCE
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file as it is, meta UIDs first
        try:
            status = assoc.send_c_store(tmp_path / "mismatch.dcm").Status
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assert status == statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        assoc.release()
        assoc = scu_association(port, called="OVERWRITE")
        assert assoc.send_c_store(first).Status == statuses.SUCCESS
        assert assoc.send_c_store(again).Status == statuses.SUCCESS
        assoc.release()
        assoc = scu_association(port, called="NOCT")
        assert assoc.send_c_store(first).Status == statuses.SUCCESS
        assoc.release()

        messages = {m.routing_key: m for m in wait_for_messages(observer, 2)}
        time.sleep(0.3)
        assert received(observer) == [], "no job for an association with nothing stored"
        assert set(messages) == {"job.received.keep", "job.received.replace"}
        for pipeline, description in (("keep", None), ("replace", "second copy")):
            body = messages[f"job.received.{pipeline}"].body
            assert isinstance(body, JobReceived)
            manifest = JobManifest.model_validate(store.get_json(body.manifest_key))
            (ref,) = manifest.instances
            assert ref.sop_instance_uid == first.SOPInstanceUID
            ds = pydicom.dcmread(BytesIO(store.get_bytes(ref.key)))
            assert ds.get("SeriesDescription") == (description or first.get("SeriesDescription"))
        assert len(incoming(store)) == 2, "nothing stored for refused or ignored instances"


# -- association limits and sockets -------------------------------------------------------


def test_max_associations_is_enforced_and_sockets_have_tcp_nodelay(
    settings: ServiceSettings, tmp_path: Path
) -> None:
    port = free_port()
    with running(settings, write_config(tmp_path / "c.yaml", port, max_associations=1)) as rx:
        held = scu_association(port)
        try:
            (accepted,) = rx.ae.active_associations
            server_socket = accepted.dul.socket.socket
            assert server_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            refused = echoscu(port)
            assert refused.returncode != 0
            assert "Local Limit Exceeded" in refused.stdout + refused.stderr
        finally:
            held.release()
        wait_until(lambda: not rx.ae.active_associations, 5, "held association ended")
        assert echoscu(port).returncode == 0


# -- after a crash: recovery and orphans ------------------------------------------------


def test_a_restarted_receiver_finishes_pending_jobs_and_quarantines_orphans(
    settings: ServiceSettings, observer: Broker, tmp_path: Path, ct: list[Path]
) -> None:
    def config(timeout: float) -> Path:
        ae_title = {"ae-title": "SERIESFLOW", "pipeline": "ct", "timeout": timeout}
        return write_config(tmp_path / f"{timeout}.yaml", port, [ae_title], incoming_ttl=3600)

    port = free_port()
    with running(settings, config(30)) as first:
        assert storescu(port, ct).returncode == 0
        wait_until(
            lambda: len(list(first.job_store.objects.list("incoming/"))) == len(ct) + 1, 5, "record"
        )
    # Stopped within the timeout: the group was never released.
    store = ObjectStore(settings)
    assert list(store.list("jobs/")) == []
    (record_name,) = [k for k in store.list("incoming/") if k.endswith("association.json")]
    record = AssociationRecord.model_validate(store.get_json(record_name))
    assert record.job_id is None and not record.published

    # Another receiver died after storing job.received but before marking it published:
    # the stored event is re-published as it is.
    stamped = new_association_id(time.time() - 600)
    stamped_key = keys.incoming_instance(stamped, "1.2.3.5")
    store.put_bytes(stamped_key, b"an instance")
    stamped_record = record.model_copy(
        update={
            "association_id": stamped,
            "instances": [record.instances[0].model_copy(update={"key": stamped_key})],
            "job_id": job_id_for([stamped]),
        }
    )
    store.put_json(keys.association_record(stamped), stamped_record.model_dump(mode="json"))
    stored_event = Envelope.wrap(
        JobReceived(
            pipeline="ct",
            manifest_key=keys.manifest(job_id_for([stamped])),
            instance_count=1,
            called_ae_title="SERIESFLOW",
            calling_ae_title="MODALITY",
        ),
        job_id=job_id_for([stamped]),
        producer="receiver",
        event_id=event_id(job_id_for([stamped]), "received"),
    )
    store.put_bytes(keys.event(stored_event.job_id, "received"), stored_event.to_bytes())

    hours_ago = new_association_id(time.time() - 7200)
    just_now = new_association_id()
    foreign = "0123456789abcdef0123456789abcdef"  # carries no time: never deleted
    for association in (hours_ago, just_now, foreign):
        store.put_bytes(keys.incoming_instance(association, "1.2.3.4"), b"left by a crash")

    # Restarted (with a shorter timeout): the group is adopted once its timeout has passed.
    with running(settings, config(1), recovery_grace_seconds=0.0, orphan_sweep_seconds=0.3):
        messages = {m.job_id: m for m in wait_for_messages(observer, 2)}
        time.sleep(0.5)
        assert received(observer) == [], "published once"
        assert messages.pop(stored_event.job_id).to_bytes() == stored_event.to_bytes()
        (message,) = messages.values()
        body = message.body
        assert isinstance(body, JobReceived)
        assert body.instance_count == len(ct)
        manifest = JobManifest.model_validate(store.get_json(body.manifest_key))
        assert manifest.associations == [record.association_id]
        record = AssociationRecord.model_validate(store.get_json(record_name))
        assert record.job_id == message.job_id and record.published
        again = AssociationRecord.model_validate(store.get_json(keys.association_record(stamped)))
        assert again.published
        left = {k.split("/")[1] for k in store.list("incoming/")}
        assert left == {record.association_id, stamped, just_now, foreign, hours_ago}
        orphan = AssociationRecord.model_validate(store.get_json(keys.quarantine_record(hours_ago)))
        assert orphan.ended == "orphaned", "an orphan is quarantined, never deleted at once"
        assert list(store.list("quarantine/")) == [keys.quarantine_record(hours_ago)]
