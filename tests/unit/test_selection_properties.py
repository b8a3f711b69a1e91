"""Properties of the matcher and the engine, checked with hypothesis."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.selection import explain, rules_from_data, select
from shared.selection.engine import evaluate

from .selection_support import ROOT, make_metadata, make_series, make_study

# DICOM values never hold a backslash: it separates values.
texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\\"),
    min_size=1,
    max_size=12,
)
numbers = st.one_of(
    st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
)
scalars = st.one_of(texts, numbers)
attribute_values = st.one_of(st.none(), st.lists(scalars, min_size=0, max_size=5))

condition_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        texts.map(re.escape),
        st.sampled_from(["^A", "(?i)a", "[0-9]", "^$", "."]),
        st.lists(scalars, max_size=3),
        numbers,
        st.builds(lambda v: {"equals": v}, scalars),
        st.builds(lambda v: {"in": v}, st.lists(scalars, min_size=1, max_size=3)),
        st.builds(lambda v: {"contains": v}, st.lists(scalars, min_size=1, max_size=3)),
        st.builds(lambda op, n: {op: n}, st.sampled_from(["lt", "le", "gt", "ge"]), numbers),
        st.builds(lambda a, b: {"range": sorted([a, b])}, numbers, numbers),
        st.builds(lambda b: {"exists": b}, st.booleans()),
        st.builds(lambda b: {"missing": b}, st.booleans()),
    ),
    lambda inner: st.builds(lambda v: {"not": v}, inner),
    max_leaves=3,
)


def check(where: dict[str, Any], view: dict[str, list[Any]]) -> bool:
    rules = rules_from_data({"selections": [{"name": "s", "where": where}]})
    return evaluate(rules.selections[0].condition, view).matched


def holds(condition: Any, values: list[Any] | None) -> bool:
    return check({"ImageType": condition}, {} if values is None else {"ImageType": values})


@given(st.lists(texts, min_size=1, max_size=6), st.data())
def test_list_from_a_subset_of_the_values_matches(values: list[str], data: st.DataObject) -> None:
    subset = data.draw(st.lists(st.sampled_from(values), max_size=len(values)))
    assert holds(subset, values)


@given(st.lists(texts, min_size=1, max_size=6), texts, st.data())
def test_list_with_a_value_not_in_the_attribute_fails(
    values: list[str], extra: str, data: st.DataObject
) -> None:
    if extra in values:
        values = [v for v in values if v != extra] or [extra + "x"]
    subset = data.draw(st.lists(st.sampled_from(values), max_size=len(values)))
    position = data.draw(st.integers(0, len(subset)))
    assert not holds([*subset[:position], extra, *subset[position:]], values)


@given(texts, st.text(max_size=8).filter(lambda t: "\\" not in t), st.text(max_size=8))
def test_escaped_value_is_found_in_a_value_containing_it(
    value: str, prefix: str, suffix: str
) -> None:
    suffix = suffix.replace("\\", "")
    assert holds(re.escape(value), [prefix + value + suffix])


@given(condition_values, attribute_values)
def test_not_inverts(condition: Any, values: list[Any] | None) -> None:
    assert holds({"not": condition}, values) is (not holds(condition, values))


@given(condition_values)
def test_missing_and_empty_attributes_are_the_same(condition: Any) -> None:
    result = holds(condition, None)
    assert result == holds(condition, [])
    if isinstance(condition, str | list | int | float):
        assert not result


@given(st.lists(condition_values, min_size=1, max_size=4), attribute_values)
def test_all_is_and_any_is_or(conditions: list[Any], values: list[Any] | None) -> None:
    view = {} if values is None else {"ImageType": values}
    each = [holds(c, values) for c in conditions]
    members = [{"ImageType": c} for c in conditions]
    assert check({"all": members}, view) is all(each)
    assert check({"any": members}, view) is any(each)
    assert check({"not": {"any": members}}, view) is not any(each)


@given(condition_values, condition_values, attribute_values, attribute_values)
def test_keys_of_one_object_are_anded(
    first: Any, second: Any, image_type: list[Any] | None, description: list[Any] | None
) -> None:
    view = {}
    if image_type is not None:
        view["ImageType"] = image_type
    if description is not None:
        view["SeriesDescription"] = description
    both = check({"ImageType": first, "SeriesDescription": second}, view)
    alone = check({"ImageType": first}, view) and check({"SeriesDescription": second}, view)
    assert both is alone


@given(st.lists(scalars, min_size=1, max_size=3), attribute_values)
def test_contains_is_all_of_in(expected: list[Any], values: list[Any] | None) -> None:
    assert holds({"contains": expected}, values) is all(
        holds({"in": [e]}, values) for e in expected
    )


@given(numbers, numbers, numbers)
def test_range_is_inclusive_between_bounds(a: float, b: float, x: float) -> None:
    low, high = sorted([a, b])
    expected = low <= x <= high
    assert holds({"range": [low, high]}, [x]) is expected
    assert holds({"range": [low, high]}, [str(x)]) is expected
    assert holds({"ge": low, "le": high}, [x]) is expected


# -- the engine --------------------------------------------------------------------------

series_specs = st.lists(
    st.tuples(
        st.integers(0, 2),  # study
        st.integers(1, 5),  # series number (ties on purpose)
        st.sampled_from(["AX T1", "AX T1c", "AX T2", "FLAIR", "T1c ref"]),
        st.integers(10, 40),  # slices
    ),
    min_size=1,
    max_size=8,
)

RULES: dict[str, list[dict[str, Any]]] = {
    "selections": [
        {"name": "t1c", "conditions": {"SeriesDescription": "T1c"}},
        {"name": "first", "conditions": {"SeriesDescription": "T1"}, "pick": "first"},
        {
            "name": "biggest",
            "where": {"any": [{"SeriesDescription": "T2"}, {"SliceCount": {"ge": 20}}]},
            "pick": "first",
            "orderBy": [{"attribute": "SliceCount", "descending": True}],
        },
        {"name": "last", "orderBy": ["SeriesNumber"], "pick": "last"},
    ]
}


def build(specs: list[tuple[int, int, str, int]], order: list[int]) -> Any:
    """Studies and series from ``specs``, with series listed in ``order``."""
    studies: dict[int, list[Any]] = {}
    for index in order:
        study, number, description, slices = specs[index]
        series = make_series(f"{ROOT}.5{study}.{index + 1}", number, description, slices=slices)
        studies.setdefault(study, []).append(series)
    return make_metadata(
        *(
            make_study(f"{ROOT}.5{s}", "MRI BRAIN", series, date=f"2024010{s % 2}")
            for s, series in studies.items()
        )
    )


@settings(max_examples=60)
@given(series_specs, st.data())
def test_select_does_not_depend_on_series_order(
    specs: list[tuple[int, int, str, int]], data: st.DataObject
) -> None:
    rules = rules_from_data(RULES)
    in_order = build(specs, list(range(len(specs))))
    shuffled = build(specs, data.draw(st.permutations(list(range(len(specs))))))
    expected = select(rules, in_order, in_order.series_images())
    actual = select(rules, shuffled, shuffled.series_images())
    assert [(k, list(v.items())) for k, v in actual.items()] == [
        (k, list(v.items())) for k, v in expected.items()
    ]
    assert explain(rules, shuffled, shuffled.series_images()).result == expected


@settings(max_examples=60)
@given(series_specs)
def test_pick_first_is_the_head_of_pick_all(specs: list[tuple[int, int, str, int]]) -> None:
    metadata = build(specs, list(range(len(specs))))
    selection = RULES["selections"][2]
    every = rules_from_data({"selections": [{**selection, "pick": "all"}]})
    first = rules_from_data({"selections": [selection]})
    all_keys = list(select(every, metadata, metadata.series_images()).get("biggest", {}))
    first_keys = list(select(first, metadata, metadata.series_images()).get("biggest", {}))
    assert first_keys == all_keys[:1]
