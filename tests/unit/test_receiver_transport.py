"""PDU framing checks, connection limits and TLS settings of the DICOM port (no network)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from services.receiver.limits import ConnectionLimits, Refusal
from services.receiver.transport import MIN_ASSOCIATION_PDU_LIMIT, PduFramer, PduLimits
from shared.config import parse_config
from shared.errors import InvalidInputError
from shared.tls import TlsConfigError, server_context


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def framer(max_pdu: int = 16384) -> PduFramer:
    return PduFramer(PduLimits(max_pdu))


def test_p_data_tf_up_to_the_announced_size_passes_and_one_byte_more_does_not() -> None:
    f = framer()
    assert f.feed(header(0x04, 16384) + bytes(16384), 0.0) is None
    assert f.pdus == 1
    violation = f.feed(header(0x04, 16385), 1.0)
    assert violation is not None
    assert violation.pdu_type == 0x04
    assert violation.reason == "P-DATA-TF of 16385 bytes, more than the 16384 allowed"


def test_association_pdus_may_be_64_kib_even_when_max_pdu_size_is_smaller() -> None:
    f = framer(4096)
    assert f.feed(header(0x01, MIN_ASSOCIATION_PDU_LIMIT), 0.0) is None
    f = framer(4096)
    violation = f.feed(header(0x01, 0xFFFFFFF0), 0.0)
    assert violation is not None and "A-ASSOCIATE-RQ of 4294967280 bytes" in violation.reason
    assert framer(1 << 20).feed(header(0x01, 1 << 20), 0.0) is None  # larger max: larger RQ


def test_a_header_split_over_reads_is_checked_once_whole() -> None:
    f = framer()
    data = header(0x04, 0xFFFFFFF0)
    for byte in data[:5]:
        assert f.feed(bytes([byte]), 0.0) is None
    assert f.in_pdu
    assert f.feed(data[5:], 0.0) is not None


def test_several_pdus_in_one_read_and_empty_ones_are_counted() -> None:
    f = framer()
    release = header(0x05, 4) + bytes(4)
    assert f.feed(release + header(0x04, 0) + release[:3], 2.0) is None
    assert f.pdus == 2
    assert f.in_pdu and f.started_at == 2.0
    assert f.feed(release[3:], 3.0) is None
    assert f.pdus == 3 and not f.in_pdu
    assert f.received == 2 * len(release) + 6


@pytest.mark.parametrize("first", [0x00, 0x08, 0x16, 0x47, 0xFF])
def test_unknown_pdu_types_are_violations(first: int) -> None:
    violation = framer().feed(bytes([first]) + bytes(5), 0.0)
    assert violation is not None and violation.reason == f"unknown PDU type 0x{first:02X}"


def test_connections_are_limited_per_address_and_in_all() -> None:
    limits = ConnectionLimits(max_connections=3, max_per_address=2, max_associations=1)
    a1 = limits.open("10.0.0.1", 1)
    a2 = limits.open("10.0.0.1", 2)
    assert limits.open("10.0.0.1", 3) is Refusal.TOO_MANY_FROM_ADDRESS
    b1 = limits.open("10.0.0.2", 1)
    assert limits.open("10.0.0.3", 1) is Refusal.TOO_MANY_CONNECTIONS
    assert not isinstance(a1, Refusal) and not isinstance(a2, Refusal)
    assert not isinstance(b1, Refusal)
    limits.close(a1)
    assert not isinstance(limits.open("10.0.0.1", 4), Refusal)
    assert limits.usage().by_address == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_only_admitted_associations_count_and_places_are_freed_once() -> None:
    limits = ConnectionLimits(max_connections=10, max_per_address=10, max_associations=1)
    first, second = limits.open("h", 1), limits.open("h", 2)
    assert not isinstance(first, Refusal) and not isinstance(second, Refusal)
    assert limits.admit(first)
    assert limits.admit(first)  # idempotent
    assert not limits.admit(second)
    limits.dismiss(first)
    limits.dismiss(first)
    assert limits.usage().associations == 0
    assert limits.admit(second)
    limits.close(second)  # closing frees its association place too
    limits.close(first)
    assert limits.usage() == limits.usage().__class__(0, 0, {})


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(0, 1, 1)


def scp_with_tls(**tls: object) -> dict[str, object]:
    return {"dicom": {"scp": {"port": 104, "tls": {"certificate": "c", "private-key": "k", **tls}}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (scp_with_tls(port=104), "tls > port must differ from port"),
        (scp_with_tls(**{"verify-clients": True}), "verify-clients needs ca-certificates"),
        (scp_with_tls(**{"verify-client": True}), "did you mean verify-clients?"),
        (
            {"dicom": {"scu": {"destinations": [{"name": "p", "host-ip": "h", "port": 1,
             "ae-title": "P", "tls": {"certificate": "c"}}]}}},
            "certificate and private-key go together",
        ),
        ({"dicom": {"scp": {"max-pdu-size": 0}}}, "max-pdu-size"),
    ],
)  # fmt: skip
def test_bad_tls_and_limit_settings_are_refused_with_their_place(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_config(data)
    assert message in caught.value.reason


def test_unreadable_certificates_name_the_setting(tmp_path: Path) -> None:
    config = parse_config(scp_with_tls(certificate=str(tmp_path / "none.crt")))
    assert config.dicom.scp.tls is not None
    with pytest.raises(TlsConfigError) as caught:
        server_context(config.dicom.scp.tls)
    assert caught.value.reason.startswith("dicom > scp > tls: certificate or private-key")
    (tmp_path / "bad.crt").write_text("not a certificate")
    config = parse_config(scp_with_tls(certificate=str(tmp_path / "bad.crt")))
    assert config.dicom.scp.tls is not None
    with pytest.raises(TlsConfigError):
        server_context(config.dicom.scp.tls)
