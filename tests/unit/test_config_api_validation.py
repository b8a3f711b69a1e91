"""Validation and audit records of the config API's repository (no store needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.configstore import AuditRecord, audit_key, normalize_spec
from shared.configstore import ConfigError as ApiError
from shared.pipelines import derived_pipeline_id
from shared.store import _etag


def test_ae_title_spec_is_canonical() -> None:
    spec = normalize_spec("ae-titles", "brain", {"ae-title": " BRAIN ", "pipeline": "p"})
    assert spec == {
        "ae-title": "BRAIN",
        "timeout": 0,
        "overwrite-same-instance": False,
        "ignored-sop-classes": [],
        "pipeline": "p",
        "require-tls": False,
        "grouping": "association",
        "duplicates": None,
    }


@pytest.mark.parametrize(
    ("kind", "name", "spec", "words"),
    [
        ("ae-titles", "a", {"ae-title": "X" * 17}, "16"),
        ("ae-titles", "a", {"ae-title": "A\\B"}, "backslash"),
        ("ae-titles", "a", {"ae-title": "  "}, "blank"),
        ("ae-titles", "a", {"ae-title": "A\nB"}, "printable"),
        ("ae-titles", "a", {"ae-title": "A", "timeout": -1}, "timeout"),
        ("ae-titles", "a/b", {"ae-title": "A"}, "name"),
        ("ae-titles", "..", {"ae-title": "A"}, ".."),
        ("sources", "s", {"ae-title": "A", "host-ip": "bad host"}, "host"),
        ("sources", "s", {"ae-title": "A"}, "host-ip"),
        ("destinations", "d", {"ae-title": "A", "host-ip": "h", "port": 0}, "port"),
        ("destinations", "d", {"ae-title": "A", "host-ip": "h", "port": 65536}, "port"),
        ("destinations", "d", {"name": "e", "ae-title": "A", "host-ip": "h", "port": 1}, "differs"),
        ("pipelines", "p", {"name": "p", "rules-file": "x.json"}, "inline"),
        ("pipelines", "p", {"name": "q"}, "differs"),
        ("pipelines", "p", {"rules": {"selections": [{"conditions": {}}]}}, "name"),
        ("pipelines", "p", {"image-format": "png"}, "image-format must be one of mhd, nii, nii.gz"),
    ],
)
def test_invalid_specs_are_422(kind: str, name: str, spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiError) as caught:
        normalize_spec(kind, name, spec)
    assert caught.value.status == 422
    assert words in caught.value.reason


def test_unknown_kind_is_404() -> None:
    with pytest.raises(ApiError) as caught:
        normalize_spec("printers", "p", {})
    assert caught.value.status == 404


def test_valid_destination_and_pipeline() -> None:
    dest = normalize_spec("destinations", "PACS", {"ae-title": "P", "host-ip": "::1", "port": 104})
    assert dest == {"name": "PACS", "ae-title": "P", "host-ip": "::1", "port": 104, "tls": None}
    pipeline = {"image-format": "nii", "routes": [{"selection": "s", "destinations": ["PACS"]}]}
    assert normalize_spec("pipelines", "p", pipeline) == {
        **pipeline,
        "name": "p",
        "id": derived_pipeline_id("p"),
    }


def test_audit_record_shape_and_key() -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    key = audit_key(when, "ab" * 16)
    assert key == f"config/audit/20250304T050607.890123Z-{'ab' * 16}.json"
    assert key < audit_key(when.replace(second=8), "00" * 16)  # keys sort by time
    record = AuditRecord(
        id="ab" * 16,
        time=when.isoformat(),
        who="alice",
        action="updated",
        kind="destinations",
        name="PACS",
        before={"port": 104},
        after={"port": 11112},
        previous_revision="r1",
        revision="r2",
    )
    assert set(record.model_dump()) == {
        "id",
        "time",
        "who",
        "action",
        "kind",
        "name",
        "before",
        "after",
        "previous_revision",
        "revision",
        "overrides_file",
    }
    with pytest.raises(ValueError):
        AuditRecord.model_validate({**record.model_dump(), "action": "renamed"})


def test_etag_normalisation() -> None:
    assert _etag('"abc"') == "abc"
    assert _etag('W/"abc"') == "abc"
    assert _etag(None) == ""
