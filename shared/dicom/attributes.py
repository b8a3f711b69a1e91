"""An attribute's value by keyword: what ``Dataset.get(keyword, default)`` gives, faster.

Frame building reads about thirty attributes of every file (positions, orientation,
spacing, rescale, vendor fields), and on a series read at rest most of them are already
decoded, shared by the series' files (:meth:`shared.dicom.files.SeriesReference.decode`).
pydicom's ``get`` still goes through ``__getattr__``, the keyword dictionary, a new ``Tag``
and ``__getitem__`` for each: about three quarters of the time of those reads. Here a
decoded element's value is taken from the dataset directly; anything else (an element still
encoded, a sequence, which pydicom links to the dataset read from, a name that is not a
keyword) goes through pydicom, so the result is always pydicom's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset


@cache
def _tag(keyword: str) -> int | None:
    return tag_for_keyword(keyword)


def attribute(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``."""
    tag = _tag(keyword)
    if tag is None:
        return ds.get(keyword, default)
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    if elem is None:
        return default
    if type(elem) is DataElement and elem.VR != "SQ":
        return elem.value
    return ds[tag].value
