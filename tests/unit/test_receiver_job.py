"""Job grouping, job IDs, manifests and overwrite-same-instance, without servers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from services.receiver.job import (
    AssociationRecord,
    Job,
    JobGrouper,
    job_id_for,
    merge_instances,
)
from shared import keys
from shared.manifest import InstanceRef

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ref(association: str, sop: str, study: str = "1.2") -> InstanceRef:
    return InstanceRef(
        key=keys.incoming_instance(association, sop),
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1.2.3",
        study_instance_uid=study,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def record(
    association: str, *sops: str, released: float = 0.0, calling: str = "CT1"
) -> AssociationRecord:
    return AssociationRecord(
        association_id=association,
        called_ae_title="SERIESFLOW",
        calling_ae_title=calling,
        calling_host="10.0.0.5",
        released_at=T0 + timedelta(seconds=released),
        instances=[ref(association, s) for s in sops],
    )


A, B, C = "a" * 32, "b" * 32, "c" * 32
PAIR = ("pair", "SERIESFLOW", "CT1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_job_ids_depend_only_on_the_set_of_associations() -> None:
    assert job_id_for([A, B]) == job_id_for([B, A])
    assert job_id_for([A]) != job_id_for([A, B])
    assert keys.validate_id(job_id_for([A])) == job_id_for([A])
    assert Job("ct", [record(B, "1.1", released=1), record(A, "1.2")]).job_id == job_id_for([A, B])


def test_the_first_copy_is_kept_unless_overwrite() -> None:
    first, second = record(A, "1.1", "1.2", released=0), record(B, "1.2", "1.3", released=1)
    kept, unused = merge_instances([first, second], overwrite=False)
    assert [(r.sop_instance_uid, r.key) for r in kept] == [
        ("1.1", keys.incoming_instance(A, "1.1")),
        ("1.2", keys.incoming_instance(A, "1.2")),
        ("1.3", keys.incoming_instance(B, "1.3")),
    ]
    assert unused == [keys.incoming_instance(B, "1.2")]
    kept, unused = merge_instances([first, second], overwrite=True)
    assert [r.key for r in kept if r.sop_instance_uid == "1.2"] == [
        keys.incoming_instance(B, "1.2")
    ]
    assert unused == [keys.incoming_instance(A, "1.2")]


def test_the_manifest_is_the_same_for_the_same_records() -> None:
    records = [record(A, "1.1", released=0), record(B, "1.2", released=3)]
    one = Job("ct", list(records)).manifest()
    two = Job("ct", list(reversed(records))).manifest()
    assert one.model_dump_json() == two.model_dump_json()
    assert one.associations == [A, B]
    assert one.created_at == T0 + timedelta(seconds=3)
    assert one.job_id == job_id_for([A, B])
    assert (one.called_ae_title, one.calling_ae_title, one.calling_host) == (
        "SERIESFLOW",
        "CT1",
        "10.0.0.5",
    )


def test_a_group_is_due_after_its_quiet_period() -> None:
    clock = Clock()
    grouper = JobGrouper(clock)
    grouper.add(PAIR, record(A, "1.1"), timeout=2.0)
    clock.now += 1.0
    grouper.add(PAIR, record(B, "1.2"), timeout=2.0)  # joins: the quiet period starts again
    clock.now += 1.5
    assert grouper.due() == []
    assert grouper.next_deadline() == 103.0
    clock.now += 0.5
    ((key, group),) = grouper.due()
    assert key == PAIR
    assert [r.association_id for r in group] == [A, B]
    assert grouper.due() == []
    assert grouper.pending_associations() == set()


def test_instances_on_an_open_association_keep_the_group_waiting() -> None:
    clock = Clock()
    grouper = JobGrouper(clock)
    grouper.add(PAIR, record(A, "1.1"), timeout=2.0)
    for _ in range(5):
        clock.now += 1.0
        grouper.activity(PAIR)  # another association still sending
        assert grouper.due() == []
    clock.now += 2.0
    assert len(grouper.due()) == 1


def test_groups_are_per_called_and_calling_ae_title() -> None:
    clock = Clock()
    grouper = JobGrouper(clock)
    other = ("pair", "SERIESFLOW", "CT2")
    grouper.add(PAIR, record(A, "1.1", calling="CT1"), timeout=1.0)
    grouper.add(other, record(B, "1.2", calling="CT2"), timeout=1.0)
    clock.now += 0.5
    grouper.activity(other)
    clock.now += 0.6
    ((_, group),) = grouper.due()
    assert [r.association_id for r in group] == [A]
    assert grouper.pending_associations() == {B}
    clock.now += 0.5
    assert [[r.association_id for r in g] for _, g in grouper.due()] == [[B]]


def test_wait_returns_at_a_new_group_or_when_stopped() -> None:
    grouper = JobGrouper()
    stop = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        grouper.wait(stop, longest=30.0)
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    grouper.add(PAIR, record(A, "1.1"), timeout=5.0)
    assert done.wait(5), "a new group wakes the scheduler"
    thread.join()


def test_records_live_beside_their_instances() -> None:
    assert keys.association_record(A) == f"incoming/{A}/association.json"
    data = record(A, "1.1").model_dump(mode="json")
    again = AssociationRecord.model_validate(data)
    assert again.job_id is None and not again.published
    assert again.group == PAIR


# -- study grouping ------------------------------------------------------------------------


def study_record(association: str, *pairs: tuple[str, str]) -> AssociationRecord:
    """A study-grouped record of (SOP Instance UID, StudyInstanceUID) pairs."""
    return AssociationRecord(
        association_id=association,
        called_ae_title="SERIESFLOW",
        calling_ae_title="CT1",
        calling_host="10.0.0.5",
        released_at=T0,
        instances=[ref(association, sop, study) for sop, study in pairs],
        grouping="study",
    )


def test_a_study_grouped_record_has_one_part_per_study_and_is_published_per_study() -> None:
    rec = study_record(A, ("1.1", "9.1"), ("1.2", "9.2"), ("1.3", "9.1"))
    parts = rec.parts()
    assert {k: [r.sop_instance_uid for r in v] for k, v in parts.items()} == {
        "9.1": ["1.1", "1.3"],
        "9.2": ["1.2"],
    }
    assert rec.stamp("9.1", job_id_for([A], "9.1"))
    assert not rec.stamp("9.1", job_id_for([A], "9.1")), "stamping again changes nothing"
    assert rec.job_of("9.1") == job_id_for([A], "9.1") and rec.job_of("9.2") is None
    assert rec.mark_published("9.1") and not rec.published
    assert rec.mark_published("9.2") and rec.published
    assert job_id_for([A], "9.1") != job_id_for([A], "9.2") != job_id_for([A])


def test_a_study_job_takes_only_its_study_from_every_association() -> None:
    one = study_record(A, ("1.1", "9.1"), ("1.2", "9.2"))
    two = study_record(B, ("1.3", "9.1"))
    manifest = Job("ct", [one, two], part="9.1").manifest()
    assert [i.sop_instance_uid for i in manifest.instances] == ["1.1", "1.3"]
    assert manifest.associations == [A, B]
    assert manifest.job_id == job_id_for([A, B], "9.1")


def test_a_study_group_waits_for_its_open_associations() -> None:
    clock = Clock()
    grouper = JobGrouper(clock)
    study = ("study", "SERIESFLOW", "9.1")
    grouper.activity(study, A)
    grouper.activity(study, B)
    grouper.add(study, study_record(A, ("1.1", "9.1")), timeout=1.0)
    grouper.ended(A)
    clock.now += 5.0
    assert grouper.due() == [], "B still open, and it brought an instance of the study"
    grouper.ended(B)  # B aborted: its instances are not the job's
    ((key, records),) = grouper.due()
    assert key == study and [r.association_id for r in records] == [A]


def test_the_copy_stored_last_or_first_wins_whatever_the_release_order() -> None:
    early, late = record(A, "1.1", released=5), record(B, "1.1", released=0)
    early.stored_at = {"1.1": 100.0}  # stored first, released last
    late.stored_at = {"1.1": 200.0}
    kept, unused = merge_instances([late, early], overwrite=True)
    assert [r.key for r in kept] == [keys.incoming_instance(B, "1.1")]
    assert unused == [keys.incoming_instance(A, "1.1")]
    kept, unused = merge_instances([late, early], overwrite=False)
    assert [r.key for r in kept] == [keys.incoming_instance(A, "1.1")]
