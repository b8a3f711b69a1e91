"""The receiver's local spool with a real receiver process (issue 10, must show): SIGKILL
right after one study's association was released and in the middle of another's loses
nothing. Writes to the object store are held (a proxy) while both are sent, so every
instance answered Success is still only in the spool when the process is killed; the
restarted receiver (same spool, by default) uploads it, and the released study becomes
its job exactly once.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from services.receiver import statuses
from services.receiver.job import AssociationRecord
from shared import keys
from shared.broker import Broker
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore

from .infra import free_port
from .test_receiver import (
    observer,  # noqa: F401  (fixture)
    received,
    storescu,
    wait_for_messages,
    wait_until,
    write_config,
)
from .test_receiver_safety import (
    StallingProxy,
    association,
    job_manifest,
    receiver_process,
    stalling_proxy,  # noqa: F401  (fixture)
    store,
)


def _uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def _stored_instances(store_: ObjectStore) -> dict[str, str]:
    """SOP Instance UID -> key, for every instance under incoming/."""
    found = {}
    for key in store_.list(keys.INCOMING):
        if key.endswith(".dcm"):
            found[key.rsplit("/", 1)[1][: -len(".dcm")]] = key
    return found


def test_sigkill_after_a_release_and_mid_association_loses_no_answered_instance(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    stalling_proxy: StallingProxy,  # noqa: F811
) -> None:
    study_a = sorted(write_ct_series(tmp_path / "a", slices=6, size=32, seed=21))
    study_b = sorted(write_ct_series(tmp_path / "b", slices=6, size=32, seed=22))
    store_ = ObjectStore(settings)
    port = free_port()
    config = write_config(tmp_path / "spool.yaml", port, incoming_ttl=2)
    process = receiver_process(
        settings, tmp_path, port, "spooled", config, s3_endpoint=stalling_proxy.endpoint
    )
    answered_b: list[str] = []
    assoc = None
    try:
        stalling_proxy.hold_puts.set()  # nothing is written to the store from now on
        result = storescu(port, study_a)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Releasing Association" in result.stderr, "study A's association is released"
        assoc = association(port)
        for path in study_b[:4]:
            assert store(assoc, path) == statuses.SUCCESS
            answered_b.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        process.kill()  # B's association is still open
    finally:
        process.stop()
        if assoc is not None:
            assoc.abort()
        stalling_proxy.hold_puts.clear()
    assert received(observer) == [], "no job was released before the kill"
    assert _stored_instances(store_) == {}, "every answered instance was only in the spool"

    # B's association must be older than incoming-ttl (2 s) when the restarted receiver
    # makes its first sweep, as an orphan of a dead receiver is: the next sweep is 300 s later.
    time.sleep(2.5)
    process = receiver_process(
        settings, tmp_path, port, "restarted", config, quarantine_check_seconds="0.3"
    )
    try:
        (message,) = wait_for_messages(observer, 1, timeout=30)
        manifest = job_manifest(store_, message)
        assert {i.sop_instance_uid for i in manifest.instances} == _uids(study_a)
        for ref in manifest.instances:
            assert store_.exists(ref.key)
        wait_until(lambda: list(store_.list("quarantine/")) != [], 20, "B quarantined")
        (key,) = store_.list("quarantine/")
        record = AssociationRecord.model_validate(store_.get_json(key))
        assert record.ended == "orphaned"
        assert {i.sop_instance_uid for i in record.instances} == set(answered_b)
        stored = _stored_instances(store_)
        for uid in answered_b:
            assert stored[uid] == keys.incoming_instance(record.association_id, uid)
        time.sleep(2)
        assert received(observer) == [], "study A is one job, published once"
    finally:
        process.stop()
    manifests = [k for k in store_.list("jobs/") if k.endswith("manifest.json")]
    assert manifests == [keys.manifest(message.job_id)]
    assert "spooled files left by an earlier receiver" in process.log()


def test_a_restart_uploads_what_a_sigterm_could_not(
    settings: ServiceSettings,
    observer: Broker,  # noqa: F811
    tmp_path: Path,
    stalling_proxy: StallingProxy,  # noqa: F811
) -> None:
    """SIGTERM while the store is held: the receiver stops after its drain with the study
    still in the spool; the next start uploads it and releases its job."""
    study = sorted(write_ct_series(tmp_path / "s", slices=3, size=32, seed=23))
    store_ = ObjectStore(settings)
    port = free_port()
    process = receiver_process(
        settings,
        tmp_path,
        port,
        "held",
        s3_endpoint=stalling_proxy.endpoint,
        store_timeout_seconds="2",
    )
    try:
        stalling_proxy.hold_puts.set()
        result = storescu(port, study)
        assert result.returncode == 0, result.stdout + result.stderr
        process.stop()
    finally:
        process.kill()
        stalling_proxy.hold_puts.clear()
    assert "spool not empty at stop" in process.log()
    assert received(observer) == []
    process = receiver_process(settings, tmp_path, port, "next")
    try:
        (message,) = wait_for_messages(observer, 1, timeout=30)
    finally:
        process.stop()
    assert {i.sop_instance_uid for i in job_manifest(store_, message).instances} == _uids(study)
