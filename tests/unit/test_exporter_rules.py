"""The exporter's pure rules: C-STORE statuses, the Clara failure rule, presentation contexts,
and the backoff inside an attempt."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from services.exporter.association import AssociationPlan, plan_associations
from services.exporter.exporting import ExportOptions
from services.exporter.status import (
    Decision,
    StoreOutcome,
    Tally,
    classify_store_status,
    decide,
    status_text,
)

CT, MR = str(CTImageStorage), str(MRImageStorage)
EXPLICIT, IMPLICIT, JPEG = (
    str(ExplicitVRLittleEndian),
    str(ImplicitVRLittleEndian),
    str(JPEGBaseline8Bit),
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, StoreOutcome.CONFIRMED),
        (0xB000, StoreOutcome.CONFIRMED),
        (0xB007, StoreOutcome.CONFIRMED),
        (0x0107, StoreOutcome.CONFIRMED),
        (None, StoreOutcome.RESEND),
        (0xA700, StoreOutcome.BUSY),
        (0xA7FF, StoreOutcome.BUSY),
        (0xA900, StoreOutcome.REFUSED),
        (0xC123, StoreOutcome.REFUSED),
        (0x0122, StoreOutcome.REFUSED),
        (0x0211, StoreOutcome.REFUSED),
        (0xFFFF, StoreOutcome.REFUSED),
    ],
)
def test_store_statuses(status: int | None, outcome: StoreOutcome) -> None:
    assert classify_store_status(status) is outcome


def test_status_text_names_the_status() -> None:
    assert status_text(0xA900) == "0xA900 (data set does not match SOP class)"
    assert status_text(0xA701) == "0xA701 (out of resources)"
    assert status_text(0xC001) == "0xC001 (cannot understand)"
    assert status_text(0x0122) == "0x0122 (SOP class not supported)"


@pytest.mark.parametrize(
    ("tally", "count", "decision"),
    [
        (Tally(10, 10, 0), 0, Decision.SUCCEEDED),
        (Tally(10, 5, 5), 0, Decision.SUCCEEDED),  # exactly half failed: not more than half
        (Tally(10, 4, 6), 0, Decision.RETRY),
        (Tally(10, 4, 6), 2, Decision.RETRY),
        (Tally(10, 4, 6), 3, Decision.GIVE_UP),  # the 4th of 4 deliveries
        (Tally(10, 4, 0), 0, Decision.FAILED),  # refused or missing: retrying cannot help
        (Tally(10, 0, 1), 0, Decision.RETRY),  # one transient failure is enough to retry
        (Tally(0, 0, 0), 0, Decision.SUCCEEDED),
        (Tally(1, 0, 1), 0, Decision.RETRY),
    ],
)
def test_an_export_fails_only_when_more_than_half_failed(
    tally: Tally, count: int, decision: Decision
) -> None:
    assert decide(tally, delivery_count=count, delivery_limit=4) is decision


def test_one_association_proposes_each_pair_and_its_little_endian_alternative() -> None:
    pairs = [(CT, EXPLICIT), (CT, EXPLICIT), (MR, JPEG), (CT, IMPLICIT), (MR, EXPLICIT)]
    assert plan_associations(pairs) == [
        AssociationPlan(
            files=(0, 1, 2, 3, 4),
            contexts=(
                (CT, EXPLICIT),
                (MR, JPEG),
                (CT, IMPLICIT),
                (MR, EXPLICIT),
                (MR, IMPLICIT),
            ),
        )
    ]


def test_a_compressed_file_gets_no_alternative() -> None:
    (plan,) = plan_associations([(CT, JPEG)])
    assert plan.contexts == ((CT, JPEG),)


def test_too_many_contexts_split_the_files_in_order_and_drop_alternatives_first() -> None:
    pairs = [(f"1.2.3.{n}", EXPLICIT) for n in range(5)]
    plans = plan_associations(pairs, limit=3)
    assert [p.files for p in plans] == [(0, 1, 2), (3, 4)]
    assert plans[0].contexts == tuple(pairs[:3])
    assert plans[1].contexts == (
        pairs[3],
        pairs[4],
        ("1.2.3.3", IMPLICIT),
    )
    for plan in plans:
        assert len(plan.contexts) <= 3
        assert {pairs[i] for i in plan.files} <= set(plan.contexts)


def test_repeated_pairs_do_not_start_a_new_association() -> None:
    pairs = [(f"1.2.3.{n % 2}", EXPLICIT) for n in range(10)]
    (plan,) = plan_associations(pairs, limit=2)
    assert plan.files == tuple(range(10))
    assert plan.contexts == (("1.2.3.0", EXPLICIT), ("1.2.3.1", EXPLICIT))


def test_backoff_doubles_up_to_the_maximum() -> None:
    options = ExportOptions(backoff=0.5, backoff_max=3.0)
    assert [options.wait(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
