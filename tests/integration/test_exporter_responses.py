"""The exporter's own C-STORE path against a real SCP (pynetdicom): the request it encodes
itself is read as the request it means, and each response status it reads itself comes
back as that status and its outcome."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt

from services.exporter.association import StoreAssociation
from services.exporter.meta import FileMeta, parse_file_meta
from services.exporter.status import classify_store_status
from shared.config import DestinationConfig
from shared.samples import write_ct_series

from .infra import free_port

STATUSES = [0x0000, 0xB000, 0xA700, 0xC211, 0x0000, 0xA900, 0x0117]
"""What the SCP answers, file after file: success, warning, out of resources, failures."""


@pytest.fixture
def scp() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    requests: list[dict[str, Any]] = []

    def handle_store(event: Any) -> int:
        request = event.request
        requests.append(
            {
                "message_id": request.MessageID,
                "sop_class_uid": str(request.AffectedSOPClassUID),
                "sop_instance_uid": str(request.AffectedSOPInstanceUID),
                "priority": request.Priority,
                "data_set_bytes": len(event.request.DataSet.getvalue()),
            }
        )
        return STATUSES[len(requests) - 1]

    ae = AE("DEST")
    ae.add_supported_context(CTImageStorage, "1.2.840.10008.1.2.1")
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    assert server is not None
    try:
        yield port, requests
    finally:
        server.shutdown()


def test_each_status_the_scp_answers_is_the_one_read(
    scp: tuple[int, list[dict[str, Any]]], tmp_path: Path
) -> None:
    port, requests = scp
    files = sorted(write_ct_series(tmp_path / "ct", slices=len(STATUSES), size=16))
    metas: list[FileMeta] = []
    for path in files:
        meta = parse_file_meta(path.read_bytes(), complete=True)
        assert isinstance(meta, FileMeta)
        metas.append(meta)
    destination = DestinationConfig.model_validate(
        {"name": "pacs", "host-ip": "127.0.0.1", "port": port, "ae-title": "DEST"}
    )
    association = StoreAssociation(
        destination, "SERIESFLOW", ((CTImageStorage, "1.2.840.10008.1.2.1"),)
    )
    association.open()
    try:
        results = [association.send(path, meta) for path, meta in zip(files, metas, strict=True)]
    finally:
        association.close()

    assert [r.status for r in results] == STATUSES
    assert [r.outcome for r in results] == [classify_store_status(s) for s in STATUSES]
    assert [r["message_id"] for r in requests] == list(range(1, len(STATUSES) + 1))
    assert {r["priority"] for r in requests} == {0x0002}
    assert [r["sop_instance_uid"] for r in requests] == [m.sop_instance_uid for m in metas]
    assert {r["sop_class_uid"] for r in requests} == {CTImageStorage}
    pairs = zip(files, metas, strict=True)
    sizes = [path.stat().st_size - meta.dataset_offset for path, meta in pairs]
    assert [r["data_set_bytes"] for r in requests] == sizes
