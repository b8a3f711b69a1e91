"""Datasets to the DICOM JSON Model (PS3.18 Annex F), without bulk data.

Pixel data, overlay and waveform data, and any binary value longer than
:data:`MAX_INLINE_BINARY` bytes are left out; nested sequences (icon images, for example)
are filtered the same way. Reading is tolerant: an element whose value pydicom cannot
decode is kept with its VR and no value, so one bad element never loses a file.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from shared.dicom.json_raw import NOT_PLAIN, json_from_raw, pydicom_reads_by_default

JsonAttributes = dict[str, dict[str, Any]]
"""A DICOM JSON Model object: ``{"GGGGEEEE": {"vr": ..., "Value": [...]}}``."""
JsonCache = dict[Hashable, dict[str, Any] | None]
"""Elements already converted, by their encoded form (see :func:`dataset_to_json`)."""
_MISSING = object()
_UNSURE_VRS = frozenset({"UN"})
"""Raw VRs whose decoding may depend on more than the element (a private creator)."""

MAX_INLINE_BINARY = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BULK_TAGS = frozenset(
    {
        0x7FE00010,  # Pixel Data
        0x7FE00008,  # Float Pixel Data
        0x7FE00009,  # Double Float Pixel Data
        0x54001010,  # Waveform Data
        0x00420011,  # Encapsulated Document
    }
)


def _is_bulk(tag: int) -> bool:
    # Overlay Data (60xx,3000) and group-length elements are never worth keeping.
    return tag in _BULK_TAGS or (tag & 0xFF01FFFF) == 0x60003000 or (tag & 0xFFFF) == 0


def tag_key(tag: int) -> str:
    """The JSON Model's key for a tag: eight upper-case hexadecimal digits."""
    return f"{tag:08X}"


def element_to_json(elem: DataElement) -> dict[str, Any] | None:
    """One element in the JSON Model, or None when it is bulk data."""
    if _is_bulk(int(elem.tag)):
        return None
    if elem.VR == "SQ":
        items = [dataset_to_json(item) for item in elem.value or []]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if elem.VR in _BINARY_VRS and elem.value is not None and len(elem.value) > MAX_INLINE_BINARY:
        return None
    try:
        return elem.to_json_dict(None, MAX_INLINE_BINARY)
    except Exception:  # a bad value must not lose the file
        return {"vr": str(elem.VR)}


def dataset_to_json(
    ds: Dataset, tags: Iterable[int] | None = None, cache: JsonCache | None = None
) -> JsonAttributes:
    """The dataset (or only ``tags`` of it) in the JSON Model, sorted by tag.

    With ``cache``, an element still in its encoded form (explicit VR, value read) is
    converted once per distinct tag, VR, byte order, bytes and character set: files of a
    series share many values that differ from the series' common ones (echo times, image
    types, orientations), and their instances then share the converted attribute.
    A number, UID or binary value still encoded is converted from its bytes
    (:func:`~shared.dicom.json_raw.json_from_raw`) and left encoded in the dataset.
    """
    out: JsonAttributes = {}
    if tags is None:
        for elem in ds:
            _put(out, int(elem.tag), element_to_json(elem))
        return out
    elements = ds._dict
    charset: Hashable = None
    plain = pydicom_reads_by_default()
    for tag in sorted(tags):
        raw = elements.get(tag)  # type: ignore[call-overload]
        if raw is None:
            continue
        if plain and type(raw) is RawDataElement and not _is_bulk(tag):
            direct = json_from_raw(raw, MAX_INLINE_BINARY)
            if direct is not NOT_PLAIN:
                _put(out, tag, direct)  # type: ignore[arg-type]
                continue
        key: Hashable = None
        if cache is not None and type(raw) is RawDataElement and _cacheable(raw):
            if charset is None:
                charset = _charset(ds)
            key = (tag, raw.VR, raw.is_little_endian, raw.value, charset)
            hit = cache.get(key, _MISSING)
            if hit is not _MISSING:
                _put(out, tag, hit)  # type: ignore[arg-type]
                continue
        converted = element_to_json(ds[tag])
        if key is not None:
            cache[key] = converted  # type: ignore[index]
        _put(out, tag, converted)
    return out


def _put(out: JsonAttributes, tag: int, converted: dict[str, Any] | None) -> None:
    if converted is not None:
        out[tag_key(tag)] = converted


def _cacheable(raw: RawDataElement) -> bool:
    """Whether the element decodes from its own bytes and the character set alone."""
    return (
        raw.value is not None
        and raw.VR is not None
        and not raw.is_implicit_VR
        and raw.VR not in _UNSURE_VRS
        and raw.VR != "SQ"
    )


def _charset(ds: Dataset) -> Hashable:
    """The character set pydicom decodes the dataset's text with, in a hashable form."""
    charset = ds.original_character_set or ds._character_set
    return tuple(charset) if isinstance(charset, list) else charset


def attribute_values(attribute: Mapping[str, Any]) -> list[Any]:
    """The plain values of one JSON Model attribute.

    Person names become their alphabetic form; sequences become lists of nested JSON
    objects; inline binary is not a comparable value and gives an empty list.
    """
    values = attribute.get("Value")
    if not values:
        return []
    if attribute.get("vr") == "PN":
        return [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
    return list(values)


def values_by_keyword(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Index a JSON Model object by DICOM keyword (``"Modality": ["MR"]``).

    Private and unknown tags keep their hexadecimal key.
    """
    out: dict[str, list[Any]] = {}
    for key, attribute in attributes.items():
        keyword = keyword_for_tag(int(key, 16)) or key
        out[keyword] = attribute_values(attribute)
    return out


def keyword_to_key(keyword: str) -> str | None:
    """``"Modality"`` -> ``"00080060"``; hexadecimal keys pass through; None if unknown."""
    if len(keyword) == 8 and all(c in "0123456789abcdefABCDEF" for c in keyword):
        return keyword.upper()
    tag = tag_for_keyword(keyword)
    return tag_key(tag) if tag is not None else None
