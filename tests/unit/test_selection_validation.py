"""Bad rules raise RulesError naming the bad rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.errors import RulesError
from shared.selection import load_rules_file, parse_rules, rules_from_data

T1C = 'selections[0] "T1C"'


def error_for(data: Any, source: str = "rules") -> RulesError:
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(RulesError) as info:
        parse_rules(text, source)
    return info.value


def one(conditions: Any, **selection: Any) -> dict[str, Any]:
    return {"selections": [{"name": "T1C", "conditions": conditions, **selection}]}


def test_error_is_permanent_and_says_where() -> None:
    err = error_for(one({"SeriesDescripton": "T1c"}), "my-rules.json")
    assert not err.transient
    assert err.location == f"{T1C} > conditions > SeriesDescripton"
    assert str(err).startswith(f"{T1C} > conditions > SeriesDescripton: ")
    assert "my-rules.json" in err.reason


def test_unknown_keyword_suggests_the_right_one() -> None:
    err = error_for(one({"Modality": "MR", "SeriesDescripton": "T1c"}))
    assert err.location == f"{T1C} > conditions > SeriesDescripton"
    assert "unknown attribute 'SeriesDescripton'" in err.reason
    assert "did you mean 'SeriesDescription'" in err.reason


def test_keyword_in_wrong_case_is_unknown_with_suggestion() -> None:
    err = error_for(one({"modality": "MR"}))
    assert err.location == f"{T1C} > conditions > modality"
    assert "did you mean 'Modality'" in err.reason


def test_bad_hex_tag_is_unknown() -> None:
    err = error_for(one({"0008103G": "x"}))
    assert err.location == f"{T1C} > conditions > 0008103G"
    err = error_for(one({"008103E": "x"}))
    assert err.location == f"{T1C} > conditions > 008103E"


def test_invalid_regex_shows_the_regex_error() -> None:
    err = error_for(one({"Modality": "MR", "SeriesDescription": "^(T1c"}))
    assert err.location == f"{T1C} > conditions > SeriesDescription"
    assert "invalid regular expression '^(T1c'" in err.reason
    assert "missing ), unterminated subpattern at position 1" in err.reason


def test_invalid_regex_inside_an_operator() -> None:
    err = error_for(one({"SeriesDescription": {"not": {"regex": "[a-"}}}))
    assert err.location == f"{T1C} > conditions > SeriesDescription > not > regex"
    assert "unterminated character set" in err.reason


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "not true"),
        (None, "not null"),
        ([["ORIGINAL"]], "expected a string or a number, not a list"),
        ([True], "expected a string or a number, not true"),
    ],
)
def test_wrong_condition_value_type(value: Any, message: str) -> None:
    err = error_for(one({"ImageType": value}))
    assert message in err.reason
    expected = f"{T1C} > conditions > ImageType"
    assert err.location in (expected, f"{expected}[0]")


@pytest.mark.parametrize(
    ("operator", "location_suffix", "message"),
    [
        ({"lt": "5"}, "lt", "expected a number, not the string '5'"),
        ({"ge": True}, "ge", "expected a number, not true"),
        ({"range": [5]}, "range", "'range' must be a list [low, high]"),
        ({"range": [5, 1]}, "range", "low 5 is greater than high 1"),
        ({"range": [None, None]}, "range", "at least one bound"),
        ({"range": ["a", 1]}, "range[0]", "expected a number"),
        ({"exists": "yes"}, "exists", "expected true or false"),
        ({"missing": 1}, "missing", "expected true or false"),
        ({"in": []}, "in", "non-empty list"),
        ({"in": "MR"}, "in", "expected a list"),
        ({"equals": None}, "equals", "expected a string or a number, not null"),
        ({"regex": 5}, "regex", "a regex must be a string"),
        ({"not": None}, "not", "not null"),
        ({}, "", "at least one operator"),
    ],
)
def test_wrong_operator_argument(
    operator: dict[str, Any], location_suffix: str, message: str
) -> None:
    err = error_for(one({"SliceThickness": operator}))
    base = f"{T1C} > conditions > SliceThickness"
    assert err.location == (f"{base} > {location_suffix}" if location_suffix else base)
    assert message in err.reason


def test_unknown_operator_is_named_with_suggestion() -> None:
    err = error_for(one({"SliceCount": {"gte": 10}}))
    assert err.location == f"{T1C} > conditions > SliceCount > gte"
    assert "unknown operator 'gte'" in err.reason
    assert "did you mean 'ge'" in err.reason


def test_duplicate_selection_names() -> None:
    data = {
        "selections": [
            {"name": "T1C", "conditions": {"Modality": "MR"}},
            {"name": "T2", "conditions": {"Modality": "MR"}},
            {"name": "T1C", "conditions": {"Modality": "CT"}},
        ]
    }
    err = error_for(data)
    assert err.location == 'selections[2] "T1C" > name'
    assert "already used by selections[0]" in err.reason


@pytest.mark.parametrize(
    ("name", "location", "message"),
    [
        ("", "selections[0] > name", "must not be empty"),
        ("   ", "selections[0] > name", "must not be empty"),
        (" T1C", "selections[0] > name", "must not start or end with a space"),
        ("T1\nC", "selections[0] > name", "control characters"),
        ("T1\x00C", "selections[0] > name", "control characters"),
        (5, "selections[0] > name", "must be a string, not the number 5"),
        ("x" * 257, "selections[0] > name", "at most 256"),
    ],
)
def test_bad_selection_name(name: Any, location: str, message: str) -> None:
    err = error_for({"selections": [{"name": name, "conditions": {}}]})
    assert err.location == location
    assert message in err.reason


def test_missing_selection_name() -> None:
    err = error_for({"selections": [{"conditions": {"Modality": "MR"}}]})
    assert err.location == "selections[0]"
    assert "needs a 'name'" in err.reason


def test_names_that_clara_users_write_are_accepted() -> None:
    names = ["T1C", "brain_t1_post", "T2 FLAIR (axial)", "Séquence T1", "a/b:c"]
    rules = rules_from_data({"selections": [{"name": n} for n in names]})
    assert rules.names == names


def test_missing_selections() -> None:
    err = error_for({"selection": []})
    assert err.location == "selection"
    assert "unknown key 'selection' (did you mean 'selections'?)" in err.reason
    err = error_for({"description": "no selections here"})
    assert err.location == ""
    assert "missing 'selections'" in err.reason


@pytest.mark.parametrize(
    ("data", "location", "message"),
    [
        ([], "", "rules must be an object with a 'selections' list, not a list"),
        ({"selections": {"name": "a"}}, "selections", "must be a list, not an object"),
        ({"selections": None}, "selections", "must be a list, not null"),
        ({"selections": ["T1C"]}, "selections[0]", "a selection must be an object"),
    ],
)
def test_wrong_document_shape(data: Any, location: str, message: str) -> None:
    err = error_for(data)
    assert err.location == location
    assert message in err.reason


def test_unknown_selection_key() -> None:
    err = error_for({"selections": [{"name": "T1C", "condition": {"Modality": "MR"}}]})
    assert err.location == f"{T1C} > condition"
    assert "unknown key 'condition' (did you mean 'conditions'?)" in err.reason


def test_conditions_must_be_an_object() -> None:
    err = error_for({"selections": [{"name": "T1C", "conditions": [{"Modality": "MR"}]}]})
    assert err.location == f"{T1C} > conditions"
    assert "'conditions' must be an object, not a list" in err.reason


@pytest.mark.parametrize(
    ("where", "location", "message"),
    [
        ({"any": []}, "where > any", "non-empty list"),
        ({"all": {"Modality": "MR"}}, "where > all", "non-empty list"),
        ({"any": ["MR"]}, "where > any[0]", "must be an object of conditions"),
        ({"not": "MR"}, "where > not", "'not' must hold an object"),
        (
            {"all": [{"Modality": "MR"}, {"any": [{"SliceCount": {"ge": "x"}}]}]},
            "where > all[1] > any[0] > SliceCount > ge",
            "expected a number",
        ),
        ({"not": {"Modalty": "MR"}}, "where > not > Modalty", "did you mean 'Modality'"),
    ],
)
def test_errors_inside_groups(where: Any, location: str, message: str) -> None:
    err = error_for({"selections": [{"name": "T1C", "where": where}]})
    assert err.location == f"{T1C} > {location}"
    assert message in err.reason


@pytest.mark.parametrize(
    ("selection", "location", "message"),
    [
        ({"pick": "one"}, "pick", "'pick' must be one of all, first, last"),
        ({"orderBy": ["SliceCont"]}, "orderBy[0]", "did you mean 'SliceCount'"),
        (
            {"orderBy": [{"attribute": "SliceCount", "descending": "yes"}]},
            "orderBy[0] > descending",
            "true or false",
        ),
        ({"orderBy": [{"attr": "SliceCount"}]}, "orderBy[0] > attr", "unknown key 'attr'"),
        ({"orderBy": [{"descending": True}]}, "orderBy[0] > attribute", "must be an attribute"),
        ({"orderBy": [3]}, "orderBy[0]", "an attribute name or an object"),
        ({"description": 3}, "description", "must be a string"),
    ],
)
def test_pick_order_by_and_description(
    selection: dict[str, Any], location: str, message: str
) -> None:
    err = error_for({"selections": [{"name": "T1C", **selection}]})
    assert err.location == f"{T1C} > {location}"
    assert message in err.reason


def test_duplicate_keys_are_rejected() -> None:
    text = '{"selections": [{"name": "T1C", "conditions": {"Modality": "MR", "Modality": "CT"}}]}'
    err = error_for(text)
    assert err.location == f"{T1C} > conditions > Modality"
    assert "given more than once" in err.reason


def test_duplicate_keys_in_yaml_are_rejected() -> None:
    text = "selections:\n- name: T1C\n  conditions:\n    Modality: MR\n    Modality: CT\n"
    err = error_for(text, "rules.yaml")
    assert err.location == f"{T1C} > conditions > Modality"


def test_non_json_text_reports_line_and_column() -> None:
    text = '{"selections": [\n  {"name": "T1C",\n   "conditions": {"Modality": "MR",}}\n]}'
    err = error_for(text, "rules.json")
    assert err.location == "line 3, column 36"
    assert "line 3, column 36: not valid JSON: Expecting property name enclosed" in err.reason
    assert "rules.json" in err.reason


def test_bad_yaml_reports_line_and_column() -> None:
    err = error_for("selections:\n  - name: [T1C\n", "rules.yml")
    assert err.location.startswith("line ")
    assert "not valid JSON or YAML" in err.reason


def test_text_that_is_neither_json_nor_rules() -> None:
    err = error_for("selections = []")
    assert "rules must be an object with a 'selections' list, not the string" in err.reason


def test_yaml_key_that_is_not_a_name() -> None:
    err = error_for("selections:\n- name: a\n  conditions:\n    [1, 2]: x\n", "r.yaml")
    assert err.location == "line 4, column 5"
    assert "a key must be a name" in err.reason


def test_decoded_key_that_is_not_a_string() -> None:
    with pytest.raises(RulesError) as info:
        rules_from_data({"selections": [{"name": "a", "conditions": {1: "x"}}]})
    assert info.value.location == 'selections[0] "a" > conditions'
    assert "key 1 must be a string" in info.value.reason


def test_non_utf8_bytes() -> None:
    with pytest.raises(RulesError, match="not UTF-8"):
        parse_rules(b'{"selections": [{"name": "\xff"}]}')


def test_nan_is_not_a_number_for_comparisons() -> None:
    err = error_for('{"selections": [{"name": "T1C", "conditions": {"SliceCount": {"lt": NaN}}}]}')
    assert err.location == f"{T1C} > conditions > SliceCount > lt"
    assert "finite" in err.reason


def test_unreadable_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules_file(tmp_path / "absent.json")
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules_file(tmp_path)


def test_rules_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(one({"Modality": "("})))
    with pytest.raises(RulesError) as info:
        load_rules_file(path)
    assert info.value.location == f"{T1C} > conditions > Modality"
    assert str(path) in info.value.reason
