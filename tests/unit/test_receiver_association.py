"""Who may open an association, and association IDs."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from services.receiver.association import (
    AssociationPolicy,
    Rejection,
    Source,
    association_created,
    new_association_id,
    resolve_host,
)
from shared import keys
from shared.config import parse_config


class Resolver:
    def __init__(self, table: dict[str, set[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str) -> set[str]:
        self.calls.append(host)
        return set(self.table.get(host, set()))


def policy(
    reject: bool = True,
    resolver: Resolver | None = None,
    resolve_ttl: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> AssociationPolicy:
    return AssociationPolicy(
        ["SERIESFLOW", "RESEARCH"],
        [Source("10.0.0.5", "CT1"), Source("pacs.example", "PACS")],
        reject,
        resolver=resolver or Resolver({"10.0.0.5": {"10.0.0.5"}, "pacs.example": {"10.0.0.9"}}),
        resolve_ttl=resolve_ttl,
        clock=clock,
    )


def test_an_unknown_called_ae_title_is_rejected_first() -> None:
    assert policy().check("OTHER", "CT1", "10.0.0.5") is Rejection.CALLED_AE_TITLE
    assert policy(reject=False).check("OTHER", "ANY", "1.2.3.4") is Rejection.CALLED_AE_TITLE
    assert Rejection.CALLED_AE_TITLE.diagnostic == 0x07
    assert (Rejection.CALLED_AE_TITLE.result, Rejection.CALLED_AE_TITLE.source) == (1, 1)


def test_a_source_needs_its_calling_ae_title_and_its_address() -> None:
    p = policy()
    assert p.check("SERIESFLOW", "CT1", "10.0.0.5") is None
    assert p.check("RESEARCH  ", "CT1  ", "10.0.0.5") is None  # padding is not significant
    assert p.check("SERIESFLOW", "PACS", "10.0.0.9") is None  # host name resolved
    assert p.check("SERIESFLOW", "CT1", "10.0.0.9") is Rejection.CALLING_AE_TITLE
    assert p.check("SERIESFLOW", "PACS", "10.0.0.5") is Rejection.CALLING_AE_TITLE
    assert p.check("SERIESFLOW", "NOBODY", "10.0.0.5") is Rejection.CALLING_AE_TITLE
    assert p.check("SERIESFLOW", "CT1", "not an address") is Rejection.CALLING_AE_TITLE
    assert Rejection.CALLING_AE_TITLE.diagnostic == 0x03


def test_ipv4_mapped_peers_match_ipv4_sources() -> None:
    assert policy().check("SERIESFLOW", "CT1", "::ffff:10.0.0.5") is None


def test_any_source_is_accepted_when_unknown_sources_are_allowed() -> None:
    assert policy(reject=False).check("SERIESFLOW", "ANYONE", "192.0.2.1") is None


def test_host_names_are_resolved_again_after_the_ttl() -> None:
    now = [0.0]
    resolver = Resolver({"pacs.example": {"10.0.0.9"}})
    p = policy(resolver=resolver, resolve_ttl=60.0, clock=lambda: now[0])
    assert p.check("SERIESFLOW", "PACS", "10.0.0.9") is None
    assert p.check("SERIESFLOW", "PACS", "10.0.0.9") is None
    assert resolver.calls.count("pacs.example") == 1
    resolver.table["pacs.example"] = {"10.0.0.10"}
    now[0] = 61.0
    assert p.check("SERIESFLOW", "PACS", "10.0.0.9") is Rejection.CALLING_AE_TITLE
    assert p.check("SERIESFLOW", "PACS", "10.0.0.10") is None


def test_resolve_host_takes_addresses_and_names() -> None:
    assert resolve_host("127.0.0.1") == {"127.0.0.1"}
    assert "127.0.0.1" in resolve_host("localhost")
    assert resolve_host("no-such-host.invalid") == set()


def test_policy_from_the_clara_configuration() -> None:
    config = parse_config(
        {
            "dicom": {
                "scp": {
                    "ae-titles": [{"ae-title": "NVIDIADGX100"}],
                    "sources": [{"host-ip": "1.2.3.4", "ae-title": "DCM4CHEE"}],
                }
            }
        }
    )
    p = AssociationPolicy.from_config(config.dicom.scp, resolver=Resolver({"1.2.3.4": {"1.2.3.4"}}))
    assert p.reject_unknown_sources  # Clara's default
    assert p.check("NVIDIADGX100", "DCM4CHEE", "1.2.3.4") is None
    assert p.check("NVIDIADGX100", "DCM4CHEE", "1.2.3.5") is Rejection.CALLING_AE_TITLE


def test_association_ids_are_valid_keys_and_carry_their_creation_time() -> None:
    now = time.time()
    ids = [new_association_id(now) for _ in range(100)]
    assert len(set(ids)) == 100
    for association_id in ids:
        assert keys.validate_id(association_id) == association_id
        created = association_created(association_id)
        assert created is not None
        assert abs(created - now) < 0.002
    earlier = new_association_id(now - 7200)
    assert earlier < ids[0], "IDs sort by creation time"


@pytest.mark.parametrize(
    "association_id",
    [
        "0123456789abcdef0123456789abcdef",  # version digit is not 7
        "0123456789ab7def0123456789abcdef",  # variant bits are not 10
        "short",
    ],
)
def test_ids_not_made_here_carry_no_time(association_id: str) -> None:
    assert association_created(association_id) is None
