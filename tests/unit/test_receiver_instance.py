"""Instances as stored: Part-10 bytes, the manifest entry, refusal statuses; configuration."""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from services.receiver import statuses
from services.receiver.instance import InstanceError, check_sop_instance_uid, describe, part10
from services.receiver.main import pipelines_by_ae_title
from shared.config import parse_config
from shared.errors import InvalidInputError
from shared.samples import write_ct_series


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_series(tmp_path_factory.mktemp("ct"), slices=1, size=16)[0]


def split(path: Path) -> tuple[FileMetaDataset, bytes]:
    data = path.read_bytes()
    meta_length = int.from_bytes(data[140:144], "little")
    return pydicom.dcmread(path).file_meta, data[144 + meta_length :]


def test_part10_keeps_the_data_set_bytes_and_names_the_source(ct_file: Path) -> None:
    meta, dataset = split(ct_file)
    data = part10(meta, dataset, "MODALITY")
    assert data.startswith(b"\0" * 128 + b"DICM")
    assert data.endswith(dataset)
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert ds.file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert ds.PixelData == pydicom.dcmread(ct_file).PixelData
    assert "SourceApplicationEntityTitle" not in meta, "the caller's meta is not changed"


@pytest.mark.parametrize(
    ("source", "called"), [("MODALITY", "SERIESFLOW"), ("ODD", "AE1"), ("", ""), ("STOW-RS", "")]
)
def test_part10_encodes_the_file_meta_as_pydicom_does(
    ct_file: Path, source: str, called: str
) -> None:
    """The File Meta Information is encoded by the receiver itself (fast), byte for byte as
    pydicom's writer does: for pynetdicom's C-STORE meta and for a file's (STOW-RS)."""
    file_meta, dataset = split(ct_file)
    sop = pydicom.dcmread(ct_file)
    c_store = create_file_meta(
        sop_class_uid=sop.SOPClassUID,
        sop_instance_uid=sop.SOPInstanceUID,
        transfer_syntax=file_meta.TransferSyntaxUID,
    )
    for meta in (file_meta, c_store):
        expected = copy.deepcopy(meta)
        if source:
            expected.SourceApplicationEntityTitle = source
        if called:
            expected.ReceivingApplicationEntityTitle = called
        encoded = part10(meta, dataset, source, called)
        assert encoded == b"\0" * 128 + b"DICM" + encode_file_meta(expected) + dataset


def test_describe_reads_the_identifying_uids(ct_file: Path) -> None:
    meta, dataset = split(ct_file)
    original = pydicom.dcmread(ct_file)
    ref = describe(
        part10(meta, dataset, "M"),
        "incoming/x",
        str(original.SOPClassUID),
        str(original.SOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )
    assert ref.key == "incoming/x"
    assert ref.series_instance_uid == original.SeriesInstanceUID
    assert ref.study_instance_uid == original.StudyInstanceUID
    assert ref.transfer_syntax_uid == meta.TransferSyntaxUID


def test_a_data_set_that_contradicts_the_request_is_refused(ct_file: Path) -> None:
    meta, dataset = split(ct_file)
    original = pydicom.dcmread(ct_file)
    data = part10(meta, dataset, "M")
    for sop_class, sop_instance in (
        ("1.2.840.10008.5.1.4.1.1.7", str(original.SOPInstanceUID)),
        (str(original.SOPClassUID), "1.2.3.4"),
    ):
        with pytest.raises(InstanceError) as caught:
            describe(data, "k", sop_class, sop_instance, str(meta.TransferSyntaxUID))
        assert caught.value.status == statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


def test_an_unreadable_data_set_cannot_be_understood(ct_file: Path) -> None:
    meta, _ = split(ct_file)
    truncated_sequence = b"\x08\x00\x16\x00SQ\x00\x00\x10\x00\x00\x00\xfe\xff"
    data = part10(meta, truncated_sequence, "M")
    with pytest.raises(InstanceError) as caught:
        describe(data, "k", "1.2", "1.2.3", str(meta.TransferSyntaxUID))
    assert caught.value.status == statuses.CANNOT_UNDERSTAND


@pytest.mark.parametrize("uid", ["", "1.2.03", "1..2", "1.2.a", "../1.2", "1." + "2" * 70])
def test_invalid_sop_instance_uids_never_name_an_object(uid: str) -> None:
    with pytest.raises(InstanceError) as caught:
        check_sop_instance_uid(uid)
    assert caught.value.status == statuses.INVALID_SOP_INSTANCE


def test_a_padded_sop_instance_uid_is_accepted() -> None:
    assert check_sop_instance_uid("1.2.3\0") == "1.2.3"


def test_every_ae_title_needs_a_pipeline() -> None:
    config = parse_config(
        {
            "dicom": {
                "scp": {
                    "ae-titles": [
                        {"ae-title": "NVIDIADGX100"},
                        {"ae-title": "OWN", "pipeline": "own_pipeline"},
                    ]
                }
            },
            "pipeline-mappings": [
                {
                    "name": "ct_ai_pipeline",
                    "clara-ae-title": "NVIDIADGX100",
                    "pipeline-id": "0fcdcdea89c6456fb20abc7379c54ef2",
                }
            ],
        }
    )
    assert pipelines_by_ae_title(config) == {
        "NVIDIADGX100": "0fcdcdea89c6456fb20abc7379c54ef2",
        "OWN": "own_pipeline",
    }
    with pytest.raises(InvalidInputError, match="'ClaraSCP' has no pipeline"):
        pipelines_by_ae_title(parse_config({}))
    bad = parse_config({"dicom": {"scp": {"ae-titles": [{"ae-title": "X", "pipeline": "../x"}]}}})
    with pytest.raises(InvalidInputError, match="'X'"):
        pipelines_by_ae_title(bad)
