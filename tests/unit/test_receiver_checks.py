"""Checks before success: the data set's encoding, its UIDs, the Affected SOP Instance UID,
and the duplicate index, without servers."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.receiver import statuses
from services.receiver.dimse import invalid_uid_reason
from services.receiver.duplicates import DuplicatePolicy, InstanceIndex, Seen, policy_of
from services.receiver.encoding import SOP_INSTANCE_UID, EncodingError, check_encoding
from services.receiver.grouping import STUDY_QUIET_SECONDS, group_for, quiet_period
from services.receiver.instance import InstanceError, describe, part10
from shared.config import AETitleConfig
from shared.samples import write_ct_series

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_series(tmp_path_factory.mktemp("ct"), slices=1, size=16)[0]


def data_set(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[144 + int.from_bytes(raw[140:144], "little") :]


def test_a_whole_data_set_passes_in_every_little_endian_syntax(
    ct_file: Path, tmp_path: Path
) -> None:
    found = check_encoding(data_set(ct_file), EXPLICIT)
    assert found[SOP_INSTANCE_UID] == pydicom.dcmread(ct_file).SOPInstanceUID
    for syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds = pydicom.dcmread(ct_file)
        ds.file_meta.TransferSyntaxUID = syntax
        out = tmp_path / f"{syntax}.dcm"
        ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
        assert len(check_encoding(data_set(out), syntax)) == 4


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (300, "cut off"),
        (-100, "cut off"),
        (0, "empty"),
    ],
)
def test_a_cut_off_data_set_is_refused(ct_file: Path, cut: int, message: str) -> None:
    data = data_set(ct_file)
    with pytest.raises(EncodingError, match=message):
        check_encoding(data[:cut], EXPLICIT)


def test_garbage_and_undelimited_sequences_are_refused() -> None:
    with pytest.raises(EncodingError):
        check_encoding(os.urandom(10240), EXPLICIT)
    # (0008,1115) SQ of undefined length with one item and no sequence delimiter
    sequence = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    with pytest.raises(EncodingError, match="sequence cut off"):
        check_encoding(sequence + item, EXPLICIT)
    with pytest.raises(EncodingError, match="out of order"):
        late = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 2) + b"A "
        early = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT"
        check_encoding(late + early, EXPLICIT)


def test_describe_requires_every_identifying_uid(ct_file: Path) -> None:
    original = pydicom.dcmread(ct_file)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        ds = pydicom.dcmread(ct_file)
        delattr(ds, keyword)
        ds.save_as(ct_file.with_suffix(".x"), enforce_file_format=True)
        data = part10(ds.file_meta, data_set(ct_file.with_suffix(".x")), "M")
        with pytest.raises(InstanceError, match=f"no {keyword}") as raised:
            describe(data, "k", original.SOPClassUID, original.SOPInstanceUID, EXPLICIT)
        assert raised.value.status == statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    data = part10(original.file_meta, data_set(ct_file)[:300], "M")
    with pytest.raises(InstanceError) as raised:
        describe(data, "k", original.SOPClassUID, original.SOPInstanceUID, EXPLICIT)
    assert raised.value.status == statuses.CANNOT_UNDERSTAND


def test_affected_sop_instance_uids_that_cannot_name_an_object() -> None:
    assert invalid_uid_reason("1.2.3") is None
    assert "empty" in (invalid_uid_reason("") or "")
    assert "empty" in (invalid_uid_reason(None) or "")
    assert "65 characters" in (invalid_uid_reason("1" * 65) or "")
    assert "not a valid UID" in (invalid_uid_reason("1.02") or "")


def test_the_duplicate_policy_follows_clara_unless_given() -> None:
    def config(**values: object) -> AETitleConfig:
        return AETitleConfig.model_validate({"ae-title": "X", **values})

    assert policy_of(config()) is DuplicatePolicy.KEEP_FIRST
    assert policy_of(config(**{"overwrite-same-instance": True})) is DuplicatePolicy.OVERWRITE
    assert policy_of(config(duplicates="reject")) is DuplicatePolicy.REJECT


def test_the_index_remembers_the_first_copy_per_group_until_forgotten() -> None:
    index = InstanceIndex()
    group = ("study", "X", "9.1")
    index.stored(group, "1.1", Seen("a" * 32, "d1"), replace=False)
    index.stored(group, "1.1", Seen("b" * 32, "d2"), replace=False)
    assert index.seen(group, "1.1") == Seen("a" * 32, "d1")
    index.stored(group, "1.1", Seen("b" * 32, "d2"), replace=True)
    assert index.seen(group, "1.1") == Seen("b" * 32, "d2")
    assert index.seen(("study", "X", "9.2"), "1.1") is None
    index.forget_association("b" * 32)
    assert index.seen(group, "1.1") is None and len(index) == 0
    index.stored(group, "1.2", Seen("a" * 32, "d"), replace=False)
    index.forget_group(group)
    assert len(index) == 0


def test_a_digest_computed_later_is_kept_only_for_the_copy_it_was_computed_from() -> None:
    index = InstanceIndex()
    group = ("study", "X", "9.1")
    first = Seen("a" * 32, "", "incoming/a/1.1.dcm")
    index.stored(group, "1.1", first, replace=False)
    index.remember_digest(group, "1.1", Seen("a" * 32, "d1", "incoming/a/1.1.dcm"))
    assert index.seen(group, "1.1") == Seen("a" * 32, "d1", "incoming/a/1.1.dcm")
    # replaced meanwhile (overwrite): a digest of the earlier copy is not kept for the new one
    index.stored(group, "1.1", Seen("b" * 32, "", "incoming/b/1.1.dcm"), replace=True)
    index.remember_digest(group, "1.1", Seen("a" * 32, "d1", "incoming/a/1.1.dcm"))
    assert index.seen(group, "1.1") == Seen("b" * 32, "", "incoming/b/1.1.dcm")
    # forgotten meanwhile (the job released): nothing comes back
    index.forget_group(group)
    index.remember_digest(group, "1.1", Seen("b" * 32, "d2", "incoming/b/1.1.dcm"))
    assert index.seen(group, "1.1") is None and len(index) == 0


def test_an_instance_s_group_follows_its_ae_title_s_grouping() -> None:
    def config(**values: object) -> AETitleConfig:
        return AETitleConfig.model_validate({"ae-title": "X", **values})

    a = "a" * 32
    assert group_for(config(), a, "CT", "9.1") == ("association", a)
    assert group_for(config(timeout=5), a, "CT", "9.1") == ("pair", "X", "CT")
    assert group_for(config(grouping="study"), a, "CT", "9.1") == ("study", "X", "9.1")
    assert quiet_period(config()) == 0
    assert quiet_period(config(grouping="study")) == STUDY_QUIET_SECONDS
    assert quiet_period(config(grouping="study", timeout=2)) == 2
    with pytest.raises(ValueError):
        config(grouping="series")
    with pytest.raises(ValueError):
        config(duplicates="ignore")
