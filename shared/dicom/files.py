"""Finding and reading DICOM Part-10 files below a folder.

Reading is tolerant: any file that is not a readable Part-10 instance is returned as a
:class:`~shared.dicom.metadata.SkippedFile` with the reason, never raised. Headers are read
with the pixel data deferred, so a study is parsed without holding its pixels in memory.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from shared.dicom.metadata import SkippedFile

_PREAMBLE = 128
_MAGIC = b"DICM"
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class InstanceFile:
    """One DICOM instance read from disk, pixel data not yet loaded.

    ``signatures`` holds, for every element but pixel data, a cheap comparable form of its
    value (its encoded bytes), taken right after reading and before anything decodes it,
    so two files' elements can be compared without decoding either.
    """

    path: Path
    relative_path: str
    dataset: Dataset
    signatures: dict[int, Hashable] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    @property
    def has_pixel_data(self) -> bool:
        return any(tag in self.dataset for tag in _PIXEL_DATA_TAGS)

    @property
    def pixel_data_complete(self) -> bool:
        """Whether the file holds all the pixel data its header announces.

        A copy cut short (an interrupted transfer) reads as a header whose pixel data
        runs past the end of the file. Encapsulated (compressed) pixel data of undefined
        length is read whole with the header, so a cut copy of it never gets this far.
        """
        for tag in _PIXEL_DATA_TAGS:
            if tag not in self.dataset:
                continue
            elem = self.dataset.get_item(tag, keep_deferred=True)
            if not isinstance(elem, RawDataElement) or elem.length == _UNDEFINED_LENGTH:
                return True
            if elem.value is not None:
                return len(elem.value) >= elem.length
            try:
                size = self.path.stat().st_size
            except OSError:
                return False
            return elem.value_tell + elem.length <= size
        return True


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file below ``root``, in a stable (sorted) order; links are not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def read_instance(path: Path, root: Path) -> InstanceFile | SkippedFile:
    """Read one file's header; a file that is not a usable DICOM instance is skipped."""
    relative = path.relative_to(root).as_posix()
    try:
        with path.open("rb") as fp:
            fp.seek(_PREAMBLE)
            if fp.read(4) != _MAGIC:
                return SkippedFile(
                    path=relative,
                    code="not_dicom",
                    reason="not a DICOM Part 10 file (no 'DICM' prefix)",
                )
        dataset = pydicom.dcmread(path, defer_size="64 KB")
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        return SkippedFile(
            path=relative, code="damaged", reason=f"unreadable DICOM header: {_describe(exc)}"
        )
    except OSError as exc:
        return SkippedFile(
            path=relative, code="unreadable", reason=f"cannot read file: {exc.strerror or exc}"
        )
    signatures = _signatures(dataset)
    if dataset.file_meta.get("MediaStorageSOPClassUID") == _MEDIA_DIRECTORY:
        return SkippedFile(
            path=relative, code="dicomdir", reason="DICOMDIR: a media directory, not an instance"
        )
    if "TransferSyntaxUID" not in dataset.file_meta:
        return SkippedFile(
            path=relative,
            code="damaged",
            reason="file meta information has no TransferSyntaxUID",
        )
    for keyword in _REQUIRED_UIDS:
        try:
            value = dataset.get(keyword)
        except Exception as exc:  # a malformed element is reported, not raised
            return SkippedFile(
                path=relative, code="damaged", reason=f"unreadable {keyword}: {_describe(exc)}"
            )
        if not value:
            return SkippedFile(
                path=relative,
                code="not_an_instance",
                reason=f"no {keyword}: not a storable instance",
            )
    return InstanceFile(path=path, relative_path=relative, dataset=dataset, signatures=signatures)


def _signatures(dataset: Dataset) -> dict[int, Hashable]:
    out: dict[int, Hashable] = {}
    for tag in dataset.keys():  # noqa: SIM118 - iterating would decode every element
        if tag in _PIXEL_DATA_TAGS:
            continue
        elem = dataset.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement):
            out[int(tag)] = (elem.VR, elem.value)
        else:  # sequences are parsed while reading
            out[int(tag)] = (elem.VR, repr(elem.value))
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
