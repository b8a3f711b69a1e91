"""A total, deterministic order of candidates.

Candidates are first ordered by a selection's ``orderBy`` keys, then always by
:data:`DEFAULT_ORDER` (StudyDate, StudyTime, SeriesNumber, SeriesInstanceUID, StackNumber),
then by volume key, so two candidates never tie and the order never depends on the order of
series in the metadata.

Values compare as numbers when they are numbers or numeric strings (DS ``"2.5"``), else as
text; a number sorts before text. A multi-valued attribute compares value by value. A
candidate that lacks an attribute sorts after every candidate that has it, whether the key
is ascending or descending.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cmp_to_key
from typing import Any

from shared.selection.attributes import as_number, value_text
from shared.selection.candidates import Candidate
from shared.selection.rules import OrderKey

DEFAULT_ORDER = ("StudyDate", "StudyTime", "SeriesNumber", "SeriesInstanceUID", "StackNumber")

_SortValue = tuple[tuple[int, float, str], ...]


def _sort_value(values: Sequence[Any] | None) -> _SortValue | None:
    if not values:
        return None
    out = []
    for value in values:
        number = as_number(value)
        if number is not None:
            out.append((0, number, ""))
        else:
            out.append((1, 0.0, value_text(value)))
    return tuple(out)


def _compare_values(a: _SortValue | None, b: _SortValue | None, descending: bool) -> int:
    if a is None or b is None:
        return (a is None) - (b is None)  # missing last
    if a == b:
        return 0
    result = -1 if a < b else 1
    return -result if descending else result


def _keys(order_by: Iterable[OrderKey]) -> list[tuple[str, bool]]:
    return [(k.lookup, k.descending) for k in order_by] + [(n, False) for n in DEFAULT_ORDER]


def order_candidates(
    candidates: Iterable[Candidate], order_by: Iterable[OrderKey] = ()
) -> list[Candidate]:
    """``candidates`` sorted by ``order_by``, then the default order, then key."""
    keys = _keys(order_by)

    def compare(a: Candidate, b: Candidate) -> int:
        for name, descending in keys:
            result = _compare_values(
                _sort_value(a.view.get(name)), _sort_value(b.view.get(name)), descending
            )
            if result:
                return result
        return (a.key > b.key) - (a.key < b.key)

    return sorted(candidates, key=cmp_to_key(compare))
