"""The selector service's pure parts: volume keys to series, export requests, file format."""

from __future__ import annotations

import json
import re
from pathlib import Path

from services.selector.selecting import (
    export_id,
    export_requests,
    routes_match,
    selected_images_bytes,
    selected_series,
    volume_series,
)
from shared.events import event_id
from shared.manifest import InstanceRef, JobManifest
from shared.operator.outputs import write_json_atomic
from shared.pipelines import parse_pipeline
from shared.selection import select

from .selection_support import (
    BRAIN,
    CLARA_T1C_RULES,
    brain_mr,
    make_metadata,
    make_series,
    make_study,
    uid,
)

JOB = "0123456789abcdef0123456789abcdef"
ASSOCIATION = "fedcba9876543210fedcba9876543210"


def manifest_for(series_uids: list[str], per_series: int = 3) -> JobManifest:
    instances = [
        InstanceRef(
            key=f"incoming/{ASSOCIATION}/{series}.9.{i}.dcm",
            sop_instance_uid=f"{series}.9.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            series_instance_uid=series,
            study_instance_uid=BRAIN,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        for series in series_uids
        for i in range(1, per_series + 1)
    ]
    return JobManifest(
        job_id=JOB,
        pipeline="brain",
        called_ae_title="SERIESFLOW",
        calling_ae_title="MRI",
        associations=[ASSOCIATION],
        instances=instances,
    )


def test_volume_keys_of_multi_stack_series_map_to_their_series() -> None:
    multi = make_series(uid(BRAIN, 7), 7, "DWI", stacks=2)
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [multi]))
    series = uid(BRAIN, 7)
    assert volume_series(metadata) == {f"{series}-1": series, f"{series}-2": series}
    assert selected_series({f"{series}-2": "x.mhd", "unknown": "y"}, metadata) == {series}


def test_each_matched_route_destination_gets_one_request_with_the_series_instances() -> None:
    metadata = brain_mr()
    pipeline = parse_pipeline(
        {
            "name": "brain",
            "rules": json.loads(CLARA_T1C_RULES),
            "routes": [
                {"selection": "T1C", "destinations": ["PACS", "AI"]},
                {"selection": "FLAIR", "destinations": ["PACS"]},  # matches nothing
                {"selection": "T1C", "destinations": ["PACS"]},  # a repeat
            ],
        },
        "test",
    )
    selections = select(pipeline.rules, metadata, metadata.series_images())
    t1c = uid(BRAIN, 3)
    manifest = manifest_for([uid(BRAIN, 2), t1c, uid(BRAIN, 4)])
    requests = export_requests(JOB, pipeline, selections, metadata, manifest)
    assert [(r.selection, r.destination) for r in requests] == [("T1C", "PACS"), ("T1C", "AI")]
    for request in requests:
        assert request.instance_keys == [
            f"incoming/{ASSOCIATION}/{t1c}.9.{i}.dcm" for i in (1, 2, 3)
        ]
        assert request.pipeline == "brain"
        assert request.export_id == event_id(JOB, "export", "T1C", request.destination)
        assert re.fullmatch(r"[0-9a-f]{32}", request.export_id)
    assert routes_match(pipeline, selections)


def test_no_route_matches_when_its_selection_is_empty() -> None:
    metadata = brain_mr()
    pipeline = parse_pipeline(
        {"name": "brain", "routes": [{"selection": "T1C", "destinations": ["PACS"]}]}, "test"
    )
    selections = select(pipeline.rules, metadata, metadata.series_images())  # empty rules
    assert "T1C" not in selections
    assert not routes_match(pipeline, selections)
    manifest = manifest_for([uid(BRAIN, 3)])
    assert export_requests(JOB, pipeline, selections, metadata, manifest) == []


def test_export_ids_are_stable_and_distinct() -> None:
    assert export_id(JOB, "T1C", "PACS") == export_id(JOB, "T1C", "PACS")
    assert (
        len(
            {
                export_id(JOB, "T1C", "PACS"),
                export_id(JOB, "T1C", "AI"),
                export_id(JOB, "T2", "PACS"),
            }
        )
        == 3
    )


def test_selected_images_are_written_byte_for_byte_as_operator_mode_writes_them(
    tmp_path: Path,
) -> None:
    selections = {"T1C": {"1.2.3": "1.2.3.nii.gz"}, "all": {"1.2.4-1": "1.2.4-1.mhd"}}
    write_json_atomic(tmp_path / "selected-images.json", selections)
    assert selected_images_bytes(selections) == (tmp_path / "selected-images.json").read_bytes()
    write_json_atomic(tmp_path / "empty.json", {})
    assert selected_images_bytes({}) == (tmp_path / "empty.json").read_bytes()
