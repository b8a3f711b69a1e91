"""Instances as received: the Part-10 bytes stored, and what the manifest says of them.

An instance is stored exactly as the peer encoded it, in its transfer syntax: the 128-byte
preamble, ``DICM``, the File Meta Information (built from the C-STORE request and the
presentation context, plus the calling AE title as Source Application Entity Title), then
the data set bytes untouched. Only the four identifying UIDs are read from the data set,
and pixel data is never decoded.
"""

from __future__ import annotations

import copy
from io import BytesIO

import pydicom
from pydicom.dataset import FileMetaDataset
from pynetdicom.dsutils import encode_file_meta

from services.receiver import statuses
from shared.identifiers import is_valid_uid
from shared.manifest import InstanceRef

_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


class InstanceError(Exception):
    """The instance cannot be accepted; ``status`` is the C-STORE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_sop_instance_uid(uid: str) -> str:
    """The Affected SOP Instance UID, if it may name an object; else InstanceError."""
    uid = (uid or "").strip("\0 ")
    if not is_valid_uid(uid):
        raise InstanceError(statuses.INVALID_SOP_INSTANCE, "SOP Instance UID is not a valid UID")
    return uid


def part10(file_meta: FileMetaDataset, encoded_dataset: bytes, source_ae_title: str) -> bytes:
    """The DICOM file: preamble, prefix, File Meta Information, data set as encoded."""
    meta = copy.deepcopy(file_meta)
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title
    return b"".join((b"\0" * 128, b"DICM", encode_file_meta(meta), encoded_dataset))


def describe(
    data: bytes, key: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str
) -> InstanceRef:
    """The manifest entry of the Part-10 ``data``; InstanceError if its UIDs disagree."""
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=_TAGS)
        found = {tag: _text(ds.get(tag)) for tag in _TAGS}
    except Exception as exc:
        raise InstanceError(
            statuses.CANNOT_UNDERSTAND, f"data set cannot be read ({type(exc).__name__})"
        ) from exc
    for tag, expected in (("SOPClassUID", sop_class_uid), ("SOPInstanceUID", sop_instance_uid)):
        if found[tag] and found[tag] != expected:
            raise InstanceError(
                statuses.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"data set {tag} differs from the C-STORE request's",
            )
    return InstanceRef(
        key=key,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        series_instance_uid=found["SeriesInstanceUID"],
        study_instance_uid=found["StudyInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
    )


def _text(value: object) -> str:
    return "" if value is None else str(value).strip("\0 ")
