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

import io
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Mapping, MutableMapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import pydicom
from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_sequence
from pydicom.misc import size_in_bytes
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

from shared.dicom.json_raw import pydicom_reads_by_default
from shared.dicom.metadata import SkippedFile

_PREAMBLE = 128
_MAGIC = b"DICM"
_REQUIRED_UIDS = {
    "SOPClassUID": BaseTag(0x00080016),
    "SOPInstanceUID": BaseTag(0x00080018),
    "SeriesInstanceUID": BaseTag(0x0020000E),
    "StudyInstanceUID": BaseTag(0x0020000D),
}
_META_UIDS = (BaseTag(0x00020002), BaseTag(0x00020010))
"""MediaStorageSOPClassUID and TransferSyntaxUID, which every read looks at."""
_PLAIN_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
"""A UID pydicom's validation accepts (PS3.5 9.1), up to 64 characters (checked apart)."""
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_WHOLE_READ_LIMIT = 4 * 1024 * 1024
"""Files up to this size are read into memory in one call and parsed there (pydicom's many
small reads from a file cost more than the parse of a buffer); larger files are parsed
from the file, so pixel data of a big multi-frame file is never held."""
_HEAD_BYTES = 128 * 1024
_HEAD_FIRST_FROM = 2 * _HEAD_BYTES
"""Files of this size or more are parsed from their first :data:`_HEAD_BYTES` when those
hold their header (see :func:`_read_header_data`)."""
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

    elements: dict[BaseTag, RawDataElement | DataElement]  # raw, or a known sequence
    signatures: dict[int, Hashable]
    shareable: dict[int, RawDataElement | DataElement] = field(default_factory=dict)
    """``elements`` by plain int tag, for lookups."""
    encoding: str | list[str] = "iso8859"
    """The character set the first file's text decodes with."""
    decoded: dict[BaseTag, DataElement] | None = None
    """The shared elements, decoded once for all the files of the series (see :meth:`wake`)."""

    def decode(self) -> dict[BaseTag, DataElement]:
        """The shared elements pydicom decodes from their bytes alone, decoded once.

        A file awake gets these instead of the raw elements, so frame building and the
        JSON conversion decode a value the series' files share once, not once per file.
        An element that does not decode stays raw: the file that reads it gets the error.
        """
        if self.decoded is None:
            self.decoded = {}
            for tag, raw in self.elements.items():
                if type(raw) is RawDataElement and _decodes_alone(raw):
                    try:
                        self.decoded[tag] = convert_raw_data_element(raw, encoding=self.encoding)
                    except Exception:  # left raw: the file that reads it gets the error
                        continue
        return self.decoded


@dataclass
class _Rest:
    """What a file at rest keeps: its own elements and how it differs from its reference."""

    reference: SeriesReference
    own: Elements  # elements not shared with the reference (at least _ALWAYS_OWN)
    missing: frozenset[int]  # the reference's tags this file does not have
    same_charset: bool = False  # its text decodes as the reference's does
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
        """Give the dataset back all its elements (a no-op unless the file is at rest).

        Shared elements are given decoded, once for the series (:meth:`SeriesReference.
        decode`), when the file's character set is the reference's.
        """
        rest = self.rest
        if rest is None or rest.awake:
            return
        reference = rest.reference
        merged: Elements = dict(reference.elements)
        if rest.same_charset:
            merged.update(reference.decode())
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


def tags_outside(files: Iterable[InstanceFile], excluded: Set[int]) -> Iterator[list[int]]:
    """For each file, its tags (plain ints) that are not in ``excluded``, pixel data never.

    A file at rest has its own elements and its reference's shared ones, less those it
    lacks: the reference's are looked at once for all the files that share it, not once a
    file (a Philips header has about 460 elements, 30 of them its own).
    """
    shared_outside: dict[int, list[int]] = {}
    for item in files:
        rest = item.rest
        if rest is None:
            yield [
                t
                for t in map(int, item.dataset.keys())
                if t not in excluded and t not in _PIXEL_TAG_SET
            ]
            continue
        shared = shared_outside.get(id(rest.reference))
        if shared is None:
            shared = [t for t in rest.reference.shareable if t not in excluded]
            shared_outside[id(rest.reference)] = shared
        own = set(map(int, rest.own))
        missing = rest.missing
        yield [t for t in own if t not in excluded and t not in _PIXEL_TAG_SET] + [
            t for t in shared if t not in own and t not in missing
        ]


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
        self._sequences: KnownSequences = {}
        self._templates = _Templates()

    def read(self, path: Path, root: Path) -> InstanceFile | SkippedFile:
        return read_instance(path, root, self._references, self._sequences, self._templates)


@dataclass
class _KnownSequence:
    """A sequence of undefined length as last read for its tag, to share with later files."""

    encoded: bytes  # its value, up to and with its Sequence Delimitation Item
    encoding: str | list[str]  # the character set it was decoded with
    element: DataElement
    signature: Hashable = None  # computed when first needed


KnownSequences = dict[int, _KnownSequence]
"""By tag: the last sequence of undefined length read (see :func:`_parse_explicit_little`)."""


_TEMPLATES_KEPT = 16
"""Series a :class:`HeaderReader` keeps a template for: the ones most recently read."""
_SERIES_UID_HEADER = b"\x20\x00\x0e\x00UI"  # (0020,000E) UI, explicit VR little endian


@dataclass
class _Template:
    """Where one file of a series encodes the elements its series' reference shares.

    A later file of the series mostly holds the same elements, encoded byte for byte the
    same and in the same order. Its parse (:func:`_parse_explicit_little`) compares its
    bytes with runs of the template's elements (shared elements one after another in the
    template's file) and takes the reference's elements for a run that matches, without
    parsing any of them: one comparison of bytes instead of an element header, a slice and
    a tuple per element, and then :func:`_at_rest` finds them shared at once. Identical
    bytes at an element's start parse to identical elements, so the result is the one the
    parse gives (with the reference's positions, as the file at rest has anyway).
    """

    reference: SeriesReference
    key: bytes  # the series' SeriesInstanceUID as encoded (the reference's key)
    charset: bytes | None  # the Specific Character Set as encoded (None: absent)
    data: memoryview  # the template file's bytes, up to its last shared element
    index: dict[int, int]  # by tag: the element's place in the lists below
    starts: list[int]  # where each element starts in ``data`` (its header)
    ends: list[int]  # and ends
    run_ends: list[int]  # for each element: the place after the last of its run
    items: list[tuple[BaseTag, RawDataElement | DataElement]]  # the reference's elements


class _Templates:
    """A reader's templates, by series; the last :data:`_TEMPLATES_KEPT` series kept.

    A series gets its template from its second file (one-file series get none).
    """

    def __init__(self) -> None:
        self._by_series: OrderedDict[bytes, _Template] = OrderedDict()
        self._first: OrderedDict[bytes, SeriesReference] = OrderedDict()
        self._last: _Template | None = None

    def guess(self, data: bytes) -> _Template | None:
        """The template of the series the file seems to be of (its first (0020,000E)
        element found by its bytes), else the last one used; the parse checks it."""
        at = data.find(_SERIES_UID_HEADER, _PREAMBLE + 4)
        if at >= 0:
            length = data[at + 6] | data[at + 7] << 8
            template = self._by_series.get(data[at + 8 : at + 8 + length])
            if template is not None:
                self._last = template
                return template
        return self._last

    def learn(self, data: bytes, rest: _Rest) -> None:
        """Make the file just read at rest its series' template, if it has none."""
        key = _series_key(rest.own)
        if key is None:
            return
        template = self._by_series.get(key)
        if template is not None and template.reference is rest.reference:
            self._by_series.move_to_end(key)
            return
        if self._first.get(key) is not rest.reference:  # the series' first file
            _keep(self._first, key, rest.reference)
            return
        template = _template_of(data, key, rest)
        if template is not None:
            _keep(self._by_series, key, template)
            self._last = template


def _keep(kept: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > _TEMPLATES_KEPT:
        kept.popitem(last=False)


def _series_key(elements: Mapping[BaseTag, Any]) -> bytes | None:
    """The SeriesInstanceUID as encoded, when it is still raw (as a file's own is)."""
    uid = elements.get(_SERIES_INSTANCE_UID)
    return uid.value if type(uid) is RawDataElement and uid.value is not None else None


def _template_of(data: bytes, key: bytes, rest: _Rest) -> _Template | None:
    """The template a file read at rest gives its series: its top-level elements walked
    again (nothing decoded), those it shares with its reference kept with their places."""
    shared = rest.reference.shareable
    own = {int(tag) for tag in rest.own}
    charset: bytes | None = None  # as encoded, as the parse compares it
    index: dict[int, int] = {}
    starts: list[int] = []
    ends: list[int] = []
    items: list[tuple[BaseTag, RawDataElement | DataElement]] = []
    pos = _file_meta(data)[1]
    end = len(data)
    while end - pos >= 8:
        header = _explicit_header(data, pos, end)
        if header is None:
            break
        group, number, vr, length, value_tell = header
        number |= group << 16
        if length == _UNDEFINED_LENGTH:
            after = _sequence_end(data, value_tell) if vr == "SQ" else None
            if after is None:
                break
        else:
            after = value_tell + length
        if after > end:
            break
        if number == _CHARSET_TAG:
            charset = data[value_tell:after]
        elem = shared.get(number)
        if elem is not None and number not in own and number != _CHARSET_TAG:
            index[number] = len(starts)
            starts.append(pos)
            ends.append(after)
            items.append((BaseTag(number), elem))
        pos = after
    if not starts:
        return None
    run_ends = list(range(1, len(starts) + 1))
    for i in range(len(starts) - 2, -1, -1):
        if ends[i] == starts[i + 1]:
            run_ends[i] = run_ends[i + 1]
    return _Template(
        reference=rest.reference,
        key=key,
        charset=charset,
        data=memoryview(bytes(data[: ends[-1]])),
        index=index,
        starts=starts,
        ends=ends,
        run_ends=run_ends,
        items=items,
    )


def _matching_run(data: bytes, pos: int, template: _Template, first: int) -> int:
    """The place after the last of the template's elements ``first``, ``first + 1``, ...
    (one run) that ``data`` holds at ``pos`` byte for byte; ``first`` when none."""
    start, ends, encoded = template.starts[first], template.ends, template.data

    def holds(after: int) -> bool:
        return data.startswith(encoded[start : ends[after - 1]], pos)

    if not holds(first + 1):
        return first
    last = template.run_ends[first]
    if holds(last):
        return last
    low, high = first + 1, last  # holds(low), not holds(high)
    while high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            low = middle
        else:
            high = middle
    return low


def read_instance(
    path: Path,
    root: Path,
    references: dict[Hashable, SeriesReference] | None = None,
    sequences: KnownSequences | None = None,
    templates: _Templates | None = None,
) -> InstanceFile | SkippedFile:
    """Read one file's header; a file that is not a usable DICOM instance is skipped.

    With ``references`` (see :class:`HeaderReader`) the file is returned at rest. With
    ``sequences``, a sequence whose encoded value is the same as the one last read for its
    tag is not parsed again: the file gets the one already parsed. With ``templates`` too,
    the elements a file encodes as its series' reference does are recognised by their
    bytes, runs of them at a time, and not parsed at all (see :class:`_Template`).
    """
    relative = path.relative_to(root).as_posix()
    if references is None:
        templates = None
    try:
        dataset, data, parsed = _read_header_data(path, sequences, templates)
        if dataset is None:
            return SkippedFile(
                path=relative,
                code="not_dicom",
                reason="not a DICOM Part 10 file (no 'DICM' prefix)",
            )
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
        signatures, rest = _at_rest(dataset, references, sequences or {}, parsed)
        if templates is not None and data is not None:
            templates.learn(data, rest)
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
    _decode_plain(dataset._dict, _REQUIRED_UIDS.values())
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


def _read_header(path: Path, sequences: KnownSequences | None = None) -> Dataset | None:
    """The file's dataset, values over 64 KB deferred; None without the 'DICM' prefix.

    A small file is read whole and parsed from memory; the dataset is then made to refer
    to the file, as if pydicom had read it by name (deferred values are read from there).
    """
    return _read_header_data(path, sequences).dataset


class _Header(NamedTuple):
    dataset: Dataset | None  # None: not a DICOM file
    data: bytes | None  # the bytes parsed here (None when pydicom read the file)
    parsed: list[BaseTag] | None  # with a template: the tags not taken from it


def _read_header_data(
    path: Path, sequences: KnownSequences | None = None, templates: _Templates | None = None
) -> _Header:
    """:func:`_read_header`, and what its parse tells :func:`_at_rest`.

    A file of :data:`_HEAD_FIRST_FROM` bytes or more is parsed from its first
    :data:`_HEAD_BYTES` first: its pixel data (most of it) is deferred anyway, and reading
    it here only to drop it cost a CT of 300 slices of 512 KiB a tenth of its header
    reading. When the start does not hold every element but a deferred value that ends the
    file, the rest is read and the whole file parsed, as a smaller one is."""
    with path.open("rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        if size > _WHOLE_READ_LIMIT:
            fp.seek(_PREAMBLE)
            if fp.read(4) != _MAGIC:
                return _Header(None, None, None)
            fp.seek(0)
            return _Header(pydicom.dcmread(fp, defer_size=_DEFER_SIZE), None, None)
        data = fp.read(_HEAD_BYTES if size >= _HEAD_FIRST_FROM else -1)
        if data[_PREAMBLE : _PREAMBLE + 4] != _MAGIC:
            return _Header(None, None, None)
        if len(data) < size:
            header = _parse_plain(data, path, sequences, templates, size)
            if header is not None:
                return header
            data += fp.read()
    header = _parse_plain(data, path, sequences, templates)
    if header is not None:
        return header
    buffer = io.BytesIO(data)
    buffer.name = str(path)  # as pydicom names what it inflates
    dataset = pydicom.dcmread(buffer, defer_size=_DEFER_SIZE)
    if dataset.buffer is buffer:  # not so when deflated: pydicom keeps what it inflated
        dataset.buffer = None
        dataset.fileobj_type = open
    return _Header(dataset, None, None)


def _parse_plain(
    data: bytes,
    path: Path,
    sequences: KnownSequences | None,
    templates: _Templates | None,
    file_size: int | None = None,
) -> _Header | None:
    """The header :func:`_parse_explicit_little` parses (``data`` the file's first bytes
    when ``file_size`` is given); None when pydicom must read the file (or, with
    ``file_size``, the whole file must be parsed)."""
    if pydicom_config.debugging:
        return None  # pydicom reads it, and logs what it reads
    template = templates.guess(data) if templates is not None else None
    parsed: list[BaseTag] | None = [] if template is not None else None
    try:
        dataset = _parse_explicit_little(data, path, sequences, template, parsed, file_size)
    except (_NotPlainError, EOFError, ValueError, KeyError, TypeError, struct.error):
        return None  # pydicom reads it, and says what is wrong with it
    return _Header(dataset, data, parsed)


_DEFER_SIZE = "64 KB"
_DEFER_BYTES = cast(float, size_in_bytes(_DEFER_SIZE))
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_VR_HEADERS = {
    code: (code.decode(), 12 if code in _LONG_VRS else 8)
    for code in (vr.encode() for vr in VR)
    if len(code) == 2
}
"""Every VR as encoded: its name and the size of an element header with it."""
_new_tuple = tuple.__new__
_CHARSET_TAG = 0x00080005


class _NotPlainError(Exception):
    """The file is not plain explicit VR little endian: pydicom reads it instead."""


def _parse_explicit_little(
    data: bytes,
    path: Path,
    sequences: KnownSequences | None = None,
    template: _Template | None = None,
    parsed: list[BaseTag] | None = None,
    file_size: int | None = None,
) -> FileDataset:
    """The dataset pydicom's ``dcmread(path, defer_size="64 KB")`` gives, parsed faster,
    except that pixel data of any size is deferred (read from the file by its offset when
    needed): held with the header, the pixels of small images (64² to 128²) made up most of
    the parser's memory for a series of thousands of them.

    For the common case only: explicit VR little endian, no command set, every VR known,
    no value of undefined length but sequences. Top-level elements are cut from the
    buffer directly (pydicom reads each through a file object); sequences of undefined
    length are read by pydicom itself, as ``dcmread`` does, unless their encoded value
    (found by walking its items and elements, nothing decoded) is the one last read for
    their tag in ``sequences``, with the same character set: then that one is taken.
    Anything else (or anything odd: a truncated element, an unknown VR) raises
    :class:`_NotPlainError`, and the caller lets pydicom read the file, so the result is
    always pydicom's.

    With a ``template`` of the file's series, a run of elements whose bytes are the ones the
    template holds is not parsed: the file gets the reference's elements for them (see
    :class:`_Template`). Should the file turn out to be of another series, it is parsed
    again without. ``parsed`` gets the tags of the elements parsed (not taken).

    With ``file_size``, ``data`` is only the file's first bytes and the file is
    ``file_size`` bytes long: every element must lie in ``data`` but a deferred value that
    ends the file (the pixel data, usually), else :class:`_NotPlainError` (the caller then
    parses the whole file); pydicom never reads from the cut bytes.
    """
    fp = io.BytesIO(data) if file_size is None else None
    preamble = data[:_PREAMBLE]
    file_meta, pos = _file_meta(data)
    end = len(data)
    if data[pos : pos + 2] == b"\0\0" or file_meta.get("TransferSyntaxUID") != (
        ExplicitVRLittleEndian
    ):
        raise _NotPlainError  # a command set (group 0000) or another transfer syntax
    if end - pos < 8 or not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B):
        raise _NotPlainError  # empty, or implicit VR despite the transfer syntax
    encoding: str | list[str] = default_encoding
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    # The loop runs once per element of every file: _explicit_header inlined, and globals
    # bound to locals (4-5 % of the parse's time, measured interleaved with the loop before).
    unpack_short, unpack_long = _EXPLICIT_SHORT.unpack_from, _LONG_LENGTH.unpack_from
    vr_headers, pixel_tags, defer_bytes = _VR_HEADERS, _PIXEL_TAG_SET, _DEFER_BYTES
    new_tuple, raw_element, base_tag = _new_tuple, RawDataElement, BaseTag
    charset: bytes | None = None  # the Specific Character Set as encoded, once read
    runs = 0  # runs of elements taken from the template
    index = template.index if template is not None else {}
    while end - pos >= 8:
        group, number, vr_bytes, length = unpack_short(data, pos)
        number |= group << 16  # the tag, compared as a plain int (BaseTag's == is slow)
        first = index.get(number)
        if first is not None and template is not None and charset == template.charset:
            after = _matching_run(data, pos, template, first)
            if after > first:  # elements first..after-1 encoded as the template's
                elements.update(template.items[first:after])
                pos += template.ends[after - 1] - template.starts[first]
                runs += 1
                continue
        known = vr_headers.get(vr_bytes)
        if known is None:
            raise _NotPlainError  # an unknown VR
        vr, size = known
        if size == 12:
            if end - pos < 12:
                raise _NotPlainError
            length = unpack_long(data, pos + 8)[0]
        value_tell = pos + size
        if number == 0xFFFEE00D:
            break
        tag = base_tag(number)
        if length == 0xFFFFFFFF:
            if vr != "SQ":
                raise _NotPlainError
            elements[tag], pos = _sequence(data, fp, value_tell, number, encoding, sequences)
            if parsed is not None:
                parsed.append(tag)
            continue
        pos = value_tell + length
        if (length > defer_bytes or number in pixel_tags) and number != _CHARSET_TAG:
            value: bytes | None = None  # read from the file when needed, by its offset
        elif length > 0:
            if pos > end:
                raise _NotPlainError  # cut short: pydicom says what it makes of it
            value = data[value_tell:pos]
        else:
            value = cast(bytes | None, empty_value_for_VR(vr, raw=True))
        if number == _CHARSET_TAG:
            encoding = convert_encodings(convert_string(value or b"", True))
            charset = value or b""
        elements[tag] = new_tuple(  # RawDataElement(tag, vr, ..., False, True), made faster
            raw_element, (tag, vr, length, value, value_tell, False, True, True, False)
        )
        if parsed is not None:
            parsed.append(tag)
    if file_size is not None and file_size - pos >= 8:
        raise _NotPlainError  # elements after the bytes read: the whole file is parsed
    if runs and template is not None and _series_key(elements) != template.key:
        if parsed is not None:
            parsed.clear()
        # the wrong template: parsed again without
        return _parse_explicit_little(data, path, sequences, None, parsed, file_size)
    # The dataset dcmread gives: its elements, and the character set they declare (decoded
    # once, into the dataset, as pydicom decodes it).
    result = FileDataset(str(path), elements, preamble, file_meta, False, True)
    result.set_original_encoding(False, True, result._character_set)
    return result


def _file_meta(data: bytes) -> tuple[FileMetaDataset, int]:
    """The File Meta Information (group 0002, explicit VR little endian) after the
    ``DICM`` prefix, and where the data set starts: what pydicom's ``_read_file_meta_info``
    reads, cut from the buffer directly (pydicom reads each element through a file
    object, a twentieth of a folder's parse). An element that is odd (unknown VR,
    undefined length, cut short) raises :class:`_NotPlainError`."""
    pos, end = _PREAMBLE + 4, len(data)
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    while end - pos >= 8 and data[pos : pos + 2] == b"\x02\0":
        header = _explicit_header(data, pos, end)
        if header is None:
            raise _NotPlainError
        _, number, vr, length, value_tell = header
        pos = value_tell + length
        if length == _UNDEFINED_LENGTH or pos > end:
            raise _NotPlainError
        tag = BaseTag(0x00020000 | number)
        value = data[value_tell:pos] if length else empty_value_for_VR(vr, raw=True)
        elements[tag] = _new_tuple(
            RawDataElement, (tag, vr, length, value, value_tell, False, True, True, False)
        )
    first = next(iter(elements), None)  # the group length, and the UIDs every read looks at
    _decode_plain(elements, _META_UIDS if first is None else (first, *_META_UIDS))
    file_meta = _new_dataset(FileMetaDataset, elements, default_encoding, default_encoding)
    if elements:
        file_meta[next(iter(elements))]  # decoded, as pydicom decodes it to check it
    return file_meta, pos


def _decode_plain(
    elements: MutableMapping[BaseTag, DataElement | RawDataElement], tags: Iterable[BaseTag]
) -> None:
    """Decode the UIDs and 4-byte UL values at ``tags`` among ``elements`` (a dataset's
    ``_dict``) into the :class:`DataElement` pydicom makes of them, without its machinery:
    for each, the raw element hooks, the value converter, the UID class's validation and
    the element's took about 14 µs, and every read decodes seven (four UIDs in the data set,
    two and the group length in the meta information).

    Only a UID pydicom's validation accepts silently (digits and dots, no leading zero, at
    most 64 characters, null or space padding) is decoded here, so the element is
    pydicom's, warnings included (there are none); anything else is left raw for pydicom,
    as is an element that is neither an explicit ``UI`` nor a little endian ``UL`` of one
    value, and everything when pydicom is configured otherwise than by default
    (:func:`~shared.dicom.json_raw.pydicom_reads_by_default`).
    """
    if not pydicom_reads_by_default():
        return
    for tag in tags:
        raw = elements.get(tag)
        if type(raw) is not RawDataElement or not raw.value:
            continue
        if raw.VR == "UL" and len(raw.value) == 4 and raw.is_little_endian:
            number = _LONG_LENGTH.unpack(raw.value)[0]
            elements[tag] = DataElement(
                tag, "UL", number, raw.value_tell, False, already_converted=True
            )
            continue
        if raw.VR != "UI":
            continue
        text = raw.value.rstrip(b"\0 ")
        if len(text) > 64 or not _PLAIN_UID.fullmatch(text):
            continue
        uid = UID(text.decode("ascii"), pydicom_config.IGNORE)  # validated just above
        elements[tag] = DataElement(tag, "UI", uid, raw.value_tell, False, already_converted=True)


def _sequence(
    data: bytes,
    fp: io.BytesIO | None,
    start: int,
    number: int,
    encoding: str | list[str],
    sequences: KnownSequences | None,
) -> tuple[DataElement, int]:
    """The sequence of undefined length whose value starts at ``start``, and its end.

    The one last read for its tag, when the bytes there are its bytes (one comparison:
    the same bytes, through its delimiter, read the same); else read, and remembered.
    What this reader does not read itself, pydicom reads from ``fp``; without one (``data``
    is only the start of the file), :class:`_NotPlainError`.
    """
    known = sequences.get(number) if sequences is not None else None
    if known is not None and known.encoding == encoding and data.startswith(known.encoded, start):
        return known.element, start + len(known.encoded)
    tag = BaseTag(number)
    try:
        sequence, end = _read_items(data, start, encoding)
        exact = True  # read from exactly data[start:end]
    except (_NotPlainError, struct.error):
        if fp is None:
            raise _NotPlainError from None
        fp.seek(start)
        sequence = read_sequence(fp, False, True, 0xFFFFFFFF, encoding)
        end = fp.tell()
        exact = sequences is not None and _sequence_end(data, start) == end
    element = DataElement(tag, "SQ", sequence, start, is_undefined_length=True)
    if exact and sequences is not None:
        encoded_encoding = encoding if isinstance(encoding, str) else list(encoding)
        sequences[number] = _KnownSequence(data[start:end], encoded_encoding, element)
    return element, end


def _read_items(
    data: bytes, pos: int, encoding: str | list[str], depth: int = 0
) -> tuple[Sequence, int]:
    """What pydicom's ``read_sequence`` reads from an undefined-length sequence whose value
    starts at ``pos`` (items, their elements raw, and nested sequences of undefined length),
    cut from the buffer; and where it ends.

    Items of explicit VR little endian elements only, neither empty (pydicom may take an
    empty item for implicit VR) nor odd (unknown VR, a value of undefined length that is not
    a sequence, an item that does not end where its length says): anything else raises
    :class:`_NotPlainError`, and pydicom reads the sequence.
    """
    if depth > 16:
        raise _NotPlainError
    end = len(data)
    items: list[Dataset] = []
    while True:
        if end - pos < 8:
            raise _NotPlainError
        group, number, length = _ITEM.unpack_from(data, pos)
        if group != 0xFFFE or number not in (0xE000, 0xE0DD):
            raise _NotPlainError
        if number == 0xE0DD:  # Sequence Delimitation Item
            if length:
                raise _NotPlainError
            pos += 8
            break
        item_start, pos = pos, pos + 8
        stop = None if length == _UNDEFINED_LENGTH else pos + length
        item, pos = _read_item(data, pos, stop, encoding, depth)
        item.is_undefined_length_sequence_item = stop is None
        item.seq_item_tell = item_start
        item.file_tell = item_start
        items.append(item)
    sequence = Sequence(items)
    sequence.is_undefined_length = True
    return sequence, pos


def _read_item(
    data: bytes, pos: int, stop: int | None, encoding: str | list[str], depth: int
) -> tuple[Dataset, int]:
    """One item's data set (see :func:`_read_items`), from ``pos`` up to ``stop`` (its
    length given) or its Item Delimitation Item; and where it ends."""
    end = len(data)
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    current = encoding  # as pydicom reads on, and the item's own: its Specific Character Set
    while stop is None or pos < stop:
        if end - pos < 8:
            raise _NotPlainError
        if stop is None and data[pos : pos + 4] == _ITEM_DELIMITER[:4]:
            if not elements:
                raise _NotPlainError
            return _new_dataset(Dataset, elements, encoding, current), pos + 8
        header = _explicit_header(data, pos, end)
        if header is None:
            raise _NotPlainError
        group, number, vr, length, value_tell = header
        number |= group << 16
        tag = BaseTag(number)
        if length == _UNDEFINED_LENGTH:
            if vr != "SQ":
                raise _NotPlainError
            nested, pos = _read_items(data, value_tell, current, depth + 1)
            elements[tag] = DataElement(tag, vr, nested, value_tell, is_undefined_length=True)
            continue
        pos = value_tell + length
        if pos > end:
            raise _NotPlainError
        value = data[value_tell:pos] if length else empty_value_for_VR(vr, raw=True)
        if number == _CHARSET_TAG:
            current = convert_encodings(convert_string(cast(bytes, value) or b"", True))
        elements[tag] = _new_tuple(
            RawDataElement, (tag, vr, length, value, value_tell, False, True, True, False)
        )
    if pos != stop or not elements:
        raise _NotPlainError
    return _new_dataset(Dataset, elements, encoding, current), pos


_D = TypeVar("_D", bound=Dataset)
_Encoding = str | list[str]


def _new_dataset(
    kind: type[_D], elements: Elements, encoding: _Encoding, own: _Encoding, pydicom: bool = False
) -> _D:
    """What ``kind(elements, parent_encoding=encoding)`` and then
    ``set_original_encoding(False, True, own)`` make (read explicit VR little endian): made
    so by pydicom with ``pydicom``, else from :func:`_dataset_template` where it can be."""
    template = None if pydicom else _dataset_template(kind)  # type: ignore[arg-type]
    if template is None:
        item = kind(elements, parent_encoding=encoding)
        item.set_original_encoding(False, True, own)
        return item
    return _from_template(kind, template, elements, encoding, own)


_DatasetState = tuple[tuple[str, Any], ...]


@cache
def _dataset_template(kind: type[Dataset]) -> _DatasetState | None:
    """The attributes pydicom gives a ``kind`` (:func:`_new_dataset`), to make one without going
    through its ``__init__`` and pydicom's ``__setattr__`` (about twenty attribute sets,
    10 µs: every file has its meta information, and a Philips file's private sequences
    make four items). None when one made from them is not the one pydicom makes (another
    pydicom version): then every one of that kind is made by pydicom. (A meta information
    made here is not validated: it holds group 0002 only, as :func:`_file_meta` reads.)"""
    blank = _new_dataset(kind, {}, default_encoding, default_encoding, pydicom=True)
    template = tuple(vars(blank).items())
    tag = BaseTag(0x00020013 if kind is FileMetaDataset else 0x00080050)  # both SH
    elements: dict[BaseTag, RawDataElement | DataElement] = {
        tag: RawDataElement(tag, "SH", 4, b"A^B ", 8, False, True)
    }
    for parent, own in ((default_encoding, default_encoding), (["iso8859", "iso_ir_126"], "utf_8")):
        expected = vars(_new_dataset(kind, dict(elements), parent, own, pydicom=True))
        made = vars(_from_template(kind, template, dict(elements), parent, own))
        if made != expected or any(
            made[key] is expected[key] for key, value in template if type(value) in (dict, list)
        ):
            return None
    return template


def _from_template(
    kind: type[_D], template: _DatasetState, elements: Elements, encoding: _Encoding, own: _Encoding
) -> _D:
    item: _D = object.__new__(kind)
    state = {key: value.copy() if type(value) in (dict, list) else value for key, value in template}
    state["_dict"] = elements
    state["_parent_encoding"] = encoding
    state["_read_charset"] = own
    item.__dict__.update(state)
    return item


_ITEM = struct.Struct("<HHL")
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"


def _sequence_end(data: bytes, pos: int, depth: int = 0) -> int | None:
    """Where a sequence of undefined length whose value starts at ``pos`` ends (after its
    delimiter), walking items and explicit VR little endian elements; None when it is
    anything else or does not end within ``data``."""
    if depth > 16:
        return None
    end = len(data)
    while end - pos >= 8:
        group, number, length = _ITEM.unpack_from(data, pos)
        pos += 8
        if group != 0xFFFE:
            return None
        if number == 0xE0DD:  # Sequence Delimitation Item
            return pos if length == 0 else None
        if number != 0xE000:
            return None
        if length != 0xFFFFFFFF:
            pos += length
            continue
        item_end = _item_end(data, pos, depth)
        if item_end is None:
            return None
        pos = item_end
    return None


def _item_end(data: bytes, pos: int, depth: int) -> int | None:
    """Where an item of undefined length whose elements start at ``pos`` ends."""
    end = len(data)
    while end - pos >= 8:
        if data[pos : pos + 2] == b"\xfe\xff":  # group FFFE: only its Item Delimitation Item
            return pos + 8 if data[pos : pos + 8] == _ITEM_DELIMITER else None
        header = _explicit_header(data, pos, end)
        if header is None:
            return None
        _, _, vr, length, pos = header
        if length != 0xFFFFFFFF:
            pos += length
            continue
        nested_end = _sequence_end(data, pos, depth + 1) if vr == "SQ" else None
        if nested_end is None:
            return None
        pos = nested_end
    return None


def _explicit_header(data: bytes, pos: int, end: int) -> tuple[int, int, str, int, int] | None:
    """The explicit VR little endian element header at ``pos``: group, element, VR, value
    length and where the value starts; None when it is not one (unknown VR, cut short)."""
    group, number, vr_bytes, length = _EXPLICIT_SHORT.unpack_from(data, pos)
    known = _VR_HEADERS.get(vr_bytes)
    if known is None:
        return None
    vr, size = known
    if size == 12:
        if end - pos < 12:
            return None
        length = _LONG_LENGTH.unpack_from(data, pos + 8)[0]
    return group, number, vr, length, pos + size


def _signature_of(elem: Any, number: int, sequences: KnownSequences) -> Hashable:
    """:func:`_signature`, computed once for a sequence shared by several files."""
    if type(elem) is DataElement:
        known = sequences.get(number)
        if known is not None and known.element is elem:
            if known.signature is None:
                known.signature = _signature(elem)
            return known.signature
    return _signature(elem)


def _signature(elem: Any) -> Hashable:
    if isinstance(elem, RawDataElement):
        return (elem.VR, elem.value)
    return (elem.VR, repr(elem.value))  # sequences are parsed while reading


def _decodes_alone(raw: RawDataElement | None) -> bool:
    """Whether pydicom decodes the element from its bytes and character set alone.

    Not so for implicit VR (the VR may depend on other elements), UN or sequences (whose
    items link to their dataset). A private element with its VR given decodes alone too:
    decoded once for a series, it lacks only ``private_creator``, which pydicom sets from
    the file that reads it and which nothing here reads (vendor fields are read by tag).
    """
    return raw is not None and raw.VR is not None and raw.VR not in ("UN", "SQ")


def _shareable(elem: Any, ref: RawDataElement | DataElement) -> bool:
    """Whether ``elem`` decodes exactly as ``ref`` does (only its position differs)."""
    return (
        type(elem) is RawDataElement
        and type(ref) is RawDataElement
        and elem.value is not None  # a deferred value is read from its own file
        and elem.VR == ref.VR
        and elem.length == ref.length
        and elem.is_implicit_VR == ref.is_implicit_VR
        and elem.is_little_endian == ref.is_little_endian
        and elem.is_raw == ref.is_raw
        and elem.value == ref.value
    )


def _at_rest(
    dataset: Dataset,
    references: dict[Hashable, SeriesReference],
    sequences: KnownSequences,
    parsed: list[BaseTag] | None = None,
) -> tuple[SparseSignatures, _Rest]:
    """Signatures and the at-rest form of a freshly read dataset (nothing decoded yet).

    Tags are looked up as plain ints: a BaseTag key compared with another BaseTag object
    calls pydicom's ``__eq__`` in Python, once per element. With ``parsed`` (the parse
    used the series' template), only the elements parsed are looked at: the others are the
    reference's own.
    """
    elements = dataset._dict
    uid = elements.get(_SERIES_INSTANCE_UID)
    key = uid.value if isinstance(uid, RawDataElement) else repr(uid)
    reference = references.get(key)
    if reference is None:
        charset = dataset.original_character_set or dataset._character_set
        reference = SeriesReference(
            elements={},
            signatures={},
            encoding=charset if isinstance(charset, str) else list(charset),
        )
        for tag, elem in elements.items():
            number = int(tag)
            if number in _PIXEL_TAG_SET:
                continue
            reference.signatures[number] = _signature_of(elem, number, sequences)
            if number in _ALWAYS_OWN:
                continue
            if type(elem) is RawDataElement:
                if elem.value is None:
                    continue  # a deferred value is read from its own file
            elif (known := sequences.get(number)) is None or known.element is not elem:
                continue  # a sequence later files can share only when it is a known one
            reference.elements[tag] = elem
            reference.shareable[number] = elem
        references[key] = reference
    shared, ref_signatures = reference.shareable, reference.signatures
    own: Elements = {}
    own_signatures: dict[int, Hashable] = {}
    # the reference's tags the file has: those taken from the template, and those parsed
    in_reference = len(elements) - len(parsed) if parsed is not None else 0
    for tag in parsed if parsed is not None else elements:
        elem = elements[tag]
        number = int(tag)
        if number in ref_signatures:
            in_reference += 1
        ref = shared.get(number)
        if ref is not None and (elem is ref or _shareable(elem, ref)):
            continue  # same encoded value: same signature, kept by the reference
        own[tag] = elem
        if number in _PIXEL_TAG_SET:
            continue
        signature = _signature_of(elem, number, sequences)
        if ref_signatures.get(number, _MISSING) != signature:
            own_signatures[number] = signature
    if in_reference == len(ref_signatures):
        missing: frozenset[int] = frozenset()
    else:
        present = {int(tag) for tag in elements}
        missing = frozenset(t for t in ref_signatures if t not in present)
    same_charset = _CHARSET_TAG not in own_signatures and _CHARSET_TAG not in missing
    return SparseSignatures(ref_signatures, own_signatures, missing), _Rest(
        reference, own, missing, same_charset
    )


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
