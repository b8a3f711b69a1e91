"""Finding and reading DICOM Part-10 files below a folder.

Reading is tolerant: any file that is not a readable Part-10 instance is returned as a
:class:`~shared.dicom.metadata.SkippedFile` with the reason, never raised. Headers are read
with the pixel data deferred, so a study is parsed without holding its pixels in memory.

A folder of thousands of files is read with a :class:`HeaderReader`, which keeps each
header *at rest*: the elements whose encoded value is the same as in the first file read
of the same series (most of them) are held once, by a :class:`SeriesReference`, and each
file keeps only its own. :func:`awake` gives a series' files their whole datasets back
for as long as they are worked on (attribute placement, conversion). So memory grows with
what differs between files, not with the number of files times the size of a header.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from shared.dicom.metadata import SkippedFile

_PREAMBLE = 128
_MAGIC = b"DICM"
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_TAG_SET = frozenset(_PIXEL_DATA_TAGS)
_ALWAYS_OWN = frozenset(
    {
        0x00080005,  # SpecificCharacterSet
        0x00080016,  # SOPClassUID
        0x00080018,  # SOPInstanceUID
        0x00080020,  # StudyDate
        0x0020000D,  # StudyInstanceUID
        0x0020000E,  # SeriesInstanceUID
        0x00200011,  # SeriesNumber
        0x00200013,  # InstanceNumber
        *_PIXEL_DATA_TAGS,
    }
)
"""Elements a file at rest always keeps itself: what grouping and sorting read."""
_MISSING = object()
_SERIES_INSTANCE_UID = BaseTag(0x0020000E)
Elements = dict[BaseTag, DataElement | RawDataElement]
"""A dataset's elements as pydicom holds them (``Dataset._dict``)."""


@dataclass
class SeriesReference:
    """The first file read of a series: elements and signatures later files can share."""

    elements: dict[BaseTag, RawDataElement]
    signatures: dict[int, Hashable]


@dataclass
class _Rest:
    """What a file at rest keeps: its own elements and how it differs from its reference."""

    reference: SeriesReference
    own: Elements  # elements not shared with the reference (at least _ALWAYS_OWN)
    missing: frozenset[int]  # the reference's tags this file does not have
    awake: bool = False


class SparseSignatures(Mapping[int, Hashable]):
    """A file's signatures: its reference's, except where the file differs.

    ``touched`` is every tag where they may differ (the file's own signatures and the
    reference's tags the file lacks), so that a series whose files share one reference is
    compared on those tags only.
    """

    __slots__ = ("missing", "own", "reference", "touched")

    def __init__(
        self, reference: dict[int, Hashable], own: dict[int, Hashable], missing: frozenset[int]
    ) -> None:
        self.reference = reference
        self.own = own
        self.missing = missing
        self.touched = frozenset(own).union(missing)

    def __getitem__(self, tag: int) -> Hashable:
        value = self.own.get(tag, _MISSING)
        if value is not _MISSING:
            return value
        if tag in self.missing:
            raise KeyError(tag)
        return self.reference[tag]

    def __iter__(self) -> Iterator[int]:
        yield from self.own
        yield from (t for t in self.reference if t not in self.missing and t not in self.own)

    def __len__(self) -> int:
        return sum(1 for _ in self)


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
    signatures: Mapping[int, Hashable] = field(default_factory=dict, compare=False, repr=False)
    rest: _Rest | None = field(default=None, compare=False, repr=False)
    """Set when the file was read at rest (see :class:`HeaderReader`)."""

    def wake(self) -> None:
        """Give the dataset back all its elements (a no-op unless the file is at rest)."""
        rest = self.rest
        if rest is None or rest.awake:
            return
        merged: Elements = dict(rest.reference.elements)
        for tag in rest.missing:
            merged.pop(BaseTag(tag), None)
        merged.update(rest.own)
        self.dataset._dict = merged
        rest.awake = True

    def sleep(self) -> None:
        """Drop the shared elements again (a no-op unless the file was read at rest)."""
        rest = self.rest
        if rest is None or not rest.awake:
            return
        self.dataset._dict = rest.own
        rest.awake = False

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


@contextmanager
def awake(files: Iterable[InstanceFile]) -> Iterator[None]:
    """The files' whole datasets, for the time of the ``with`` block."""
    items = list(files)
    for item in items:
        item.wake()
    try:
        yield
    finally:
        for item in items:
            item.sleep()


class HeaderReader:
    """Reads headers at rest, sharing what a series' files have in common.

    One reader per folder (or job): it holds one :class:`SeriesReference` per series.
    """

    def __init__(self) -> None:
        self._references: dict[Hashable, SeriesReference] = {}

    def read(self, path: Path, root: Path) -> InstanceFile | SkippedFile:
        return read_instance(path, root, self._references)


def read_instance(
    path: Path, root: Path, references: dict[Hashable, SeriesReference] | None = None
) -> InstanceFile | SkippedFile:
    """Read one file's header; a file that is not a usable DICOM instance is skipped.

    With ``references`` (see :class:`HeaderReader`) the file is returned at rest.
    """
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
    if references is None:
        signatures: Mapping[int, Hashable] = _signatures(dataset)
        rest: _Rest | None = None
    else:
        signatures, rest = _at_rest(dataset, references)
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
    if rest is not None:
        elements = dataset._dict
        rest.own = {t: elements[t] for t in rest.own}  # with the UIDs decoded above
        dataset._dict = rest.own
    return InstanceFile(
        path=path, relative_path=relative, dataset=dataset, signatures=signatures, rest=rest
    )


def _signature(elem: Any) -> Hashable:
    if isinstance(elem, RawDataElement):
        return (elem.VR, elem.value)
    return (elem.VR, repr(elem.value))  # sequences are parsed while reading


def _shareable(elem: Any, ref: RawDataElement) -> bool:
    """Whether ``elem`` decodes exactly as ``ref`` does (only its position differs)."""
    return (
        type(elem) is RawDataElement
        and elem.value is not None  # a deferred value is read from its own file
        and elem.VR == ref.VR
        and elem.length == ref.length
        and elem.is_implicit_VR == ref.is_implicit_VR
        and elem.is_little_endian == ref.is_little_endian
        and elem.is_raw == ref.is_raw
        and elem.value == ref.value
    )


def _at_rest(
    dataset: Dataset, references: dict[Hashable, SeriesReference]
) -> tuple[SparseSignatures, _Rest]:
    """Signatures and the at-rest form of a freshly read dataset (nothing decoded yet)."""
    elements = dataset._dict
    uid = elements.get(_SERIES_INSTANCE_UID)
    key = uid.value if isinstance(uid, RawDataElement) else repr(uid)
    reference = references.get(key)
    if reference is None:
        reference = SeriesReference(elements={}, signatures={})
        for tag, elem in elements.items():
            if tag in _PIXEL_TAG_SET:
                continue
            reference.signatures[tag] = _signature(elem)
            if tag not in _ALWAYS_OWN and type(elem) is RawDataElement and elem.value is not None:
                reference.elements[tag] = elem
        references[key] = reference
    shared, ref_signatures = reference.elements, reference.signatures
    own: Elements = {}
    own_signatures: dict[int, Hashable] = {}
    for tag, elem in elements.items():
        ref = shared.get(tag)
        if ref is not None and (elem is ref or _shareable(elem, ref)):
            continue  # same encoded value: same signature, kept by the reference
        own[tag] = elem
        if tag in _PIXEL_TAG_SET:
            continue
        signature = _signature(elem)
        if ref_signatures.get(tag, _MISSING) != signature:
            own_signatures[tag] = signature
    missing = frozenset(t for t in ref_signatures if t not in elements)
    return SparseSignatures(ref_signatures, own_signatures, missing), _Rest(reference, own, missing)


def _signatures(dataset: Dataset) -> dict[int, Hashable]:
    """Every element's signature but pixel data's (read from the raw elements directly)."""
    return {
        int(tag): _signature(elem)
        for tag, elem in dataset._dict.items()
        if tag not in _PIXEL_TAG_SET
    }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
