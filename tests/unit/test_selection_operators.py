"""seriesflow's extensions: operators, groups, derived attributes, pick/orderBy, YAML."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.dicom.metadata import DicomMetadata
from shared.selection import parse_rules, rules_from_data, select
from shared.selection.engine import evaluate

from .selection_support import (
    BRAIN,
    KNEE,
    ROOT,
    brain_mr,
    make_metadata,
    make_series,
    make_study,
    uid,
)


def matched_keys(selection: dict[str, Any], metadata: DicomMetadata | None = None) -> list[str]:
    """The keys one selection picks from ``metadata`` (default: the brain MR study)."""
    metadata = metadata or brain_mr()
    rules = rules_from_data({"selections": [{"name": "s", **selection}]})
    return list(select(rules, metadata, metadata.series_images()).get("s", {}))


def holds(value: Any, values: list[Any] | None, attribute: str = "SeriesDescription") -> bool:
    """Whether condition ``value`` on ``attribute`` holds for a view with ``values``."""
    rules = rules_from_data({"selections": [{"name": "s", "conditions": {attribute: value}}]})
    view = {} if values is None else {attribute: values}
    return evaluate(rules.selections[0].condition, view).matched


# -- operators ---------------------------------------------------------------------------


def test_regex_operator_is_the_same_as_a_string() -> None:
    for values in (["AX T1c"], ["t1c"], None):
        assert holds({"regex": "T1c"}, values) == holds("T1c", values)
    assert holds({"regex": "(?i)t1C"}, ["AX T1c"])


def test_equals_a_string_is_exact() -> None:
    assert holds({"equals": "MR"}, ["MR"], "Modality")
    assert not holds({"equals": "MR"}, ["MRI"], "Modality")
    assert not holds({"equals": "mr"}, ["MR"], "Modality")
    assert not holds({"equals": "MR"}, None, "Modality")


def test_equals_a_number_is_numeric() -> None:
    assert holds({"equals": 5}, [5.0], "SliceThickness")
    assert holds({"equals": 5.0}, ["5"], "SliceThickness")
    assert not holds({"equals": 5}, [5.5], "SliceThickness")
    assert not holds({"equals": 5}, ["five"], "SliceThickness")


def test_equals_on_multi_valued_attribute_needs_every_value_in_order() -> None:
    image_type = ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert holds({"equals": ["ORIGINAL", "PRIMARY", "AXIAL"]}, image_type, "ImageType")
    assert not holds({"equals": ["PRIMARY", "ORIGINAL", "AXIAL"]}, image_type, "ImageType")
    assert not holds({"equals": ["ORIGINAL", "PRIMARY"]}, image_type, "ImageType")
    assert not holds({"equals": "ORIGINAL"}, image_type, "ImageType")


def test_bare_number_means_equals() -> None:
    assert holds(3, [3], "SeriesNumber")
    assert not holds(3, [30], "SeriesNumber")


def test_in() -> None:
    assert holds({"in": ["CT", "MR"]}, ["MR"], "Modality")
    assert not holds({"in": ["CT", "PT"]}, ["MR"], "Modality")
    assert holds({"in": ["LOCALIZER", "AXIAL"]}, ["ORIGINAL", "PRIMARY", "AXIAL"], "ImageType")
    assert not holds({"in": ["LOCALIZER"]}, ["ORIGINAL", "PRIMARY", "AXIAL"], "ImageType")
    assert holds({"in": [1, 2]}, [2.0], "EchoNumbers")


def test_contains_is_the_clara_list() -> None:
    image_type = ["ORIGINAL", "PRIMARY", "NON_AXIAL"]
    assert holds({"contains": ["ORIGINAL", "PRIMARY"]}, image_type, "ImageType")
    assert holds({"contains": "NON_AXIAL"}, image_type, "ImageType")
    assert not holds({"contains": "AXIAL"}, image_type, "ImageType")


@pytest.mark.parametrize(
    ("value", "number", "expected"),
    [
        ({"lt": 5}, 4.9, True),
        ({"lt": 5}, 5, False),
        ({"le": 5}, 5, True),
        ({"le": 5}, 5.1, False),
        ({"gt": 5}, 5, False),
        ({"gt": 5}, 6, True),
        ({"ge": 5}, 5, True),
        ({"ge": 5}, 4, False),
        ({"range": [1, 5]}, 1, True),
        ({"range": [1, 5]}, 5, True),
        ({"range": [1, 5]}, 5.01, False),
        ({"range": [1, 5]}, 0.99, False),
        ({"range": [None, 5]}, -100, True),
        ({"range": [1, None]}, 1e9, True),
        ({"ge": 1, "le": 5}, 3, True),
        ({"ge": 1, "le": 5}, 6, False),
    ],
)
def test_numeric_comparisons(value: dict[str, Any], number: float, expected: bool) -> None:
    assert holds(value, [number], "SliceThickness") is expected
    assert holds(value, [str(number)], "SliceThickness") is expected  # DS as text


def test_numeric_comparison_on_text_does_not_match() -> None:
    assert not holds({"gt": 0}, ["AX T1"])
    assert not holds({"range": [0, 10]}, ["abc"])
    assert not holds({"lt": 10}, None)


def test_numeric_comparison_on_several_values_needs_all() -> None:
    assert holds({"le": 1.0}, [0.5, 0.5], "PixelSpacing")
    assert not holds({"le": 1.0}, [0.5, 1.5], "PixelSpacing")


def test_exists_and_missing() -> None:
    assert holds({"exists": True}, ["x"], "BodyPartExamined")
    assert not holds({"exists": True}, None, "BodyPartExamined")
    assert not holds({"exists": True}, [], "BodyPartExamined")
    assert holds({"exists": False}, None, "BodyPartExamined")
    assert holds({"missing": True}, None, "BodyPartExamined")
    assert holds({"missing": True}, [], "BodyPartExamined")
    assert not holds({"missing": True}, ["x"], "BodyPartExamined")
    assert holds({"missing": False}, ["x"], "BodyPartExamined")


def test_not_inverts_and_holds_on_missing_attribute() -> None:
    assert holds({"not": "(?i)localizer"}, ["AX T1"])
    assert not holds({"not": "(?i)localizer"}, ["Localizer"])
    assert holds({"not": "T1"}, None)
    assert not holds({"not": ["AXIAL"]}, ["AXIAL"], "ImageType")
    assert holds({"not": {"in": ["CT", "PT"]}}, ["MR"], "Modality")
    assert holds({"not": {"not": "T1"}}, ["T1"])


def test_operators_in_one_object_must_all_hold() -> None:
    value = {"regex": "T1c", "not": "(ref|3x3)"}
    assert holds(value, ["AX T1c post"])
    assert not holds(value, ["AX T1c ref"])
    assert not holds(value, ["AX T2"])


def test_sequence_attribute_only_answers_exists() -> None:
    item = {"00081150": {"vr": "UI", "Value": ["1.2.3"]}}
    assert holds({"exists": True}, [item], "ReferencedImageSequence")
    assert not holds(".*", [item], "ReferencedImageSequence")
    assert not holds({"equals": "x"}, [item], "ReferencedImageSequence")


# -- groups ------------------------------------------------------------------------------


def test_where_any_group() -> None:
    keys = matched_keys(
        {"where": {"any": [{"SeriesDescription": "FLAIR"}, {"SeriesDescription": "T2"}]}}
    )
    assert keys == [uid(BRAIN, 7), uid(BRAIN, 8)]


def test_where_not_group() -> None:
    keys = matched_keys(
        {
            "conditions": {"StudyDescription": "(?i)brain"},
            "where": {"not": {"SeriesDescription": "T1"}},
        }
    )
    assert keys == [uid(BRAIN, 7), uid(BRAIN, 8)]


def test_nested_groups_and_mixed_keys() -> None:
    where = {
        "Modality": "^MR$",
        "all": [
            {"ImageType": ["ORIGINAL"]},
            {
                "any": [
                    {"SliceCount": {"ge": 35}},
                    {"SeriesDescription": "T1c", "not": {"SeriesDescription": "ref|3x3"}},
                ]
            },
        ],
    }
    assert matched_keys({"where": where}) == [uid(KNEE, 1), uid(BRAIN, 3), uid(BRAIN, 8)]


def test_conditions_and_where_both_hold() -> None:
    keys = matched_keys(
        {"conditions": {"SeriesDescription": "T1c"}, "where": {"Orientation": "SAGITTAL"}}
    )
    assert keys == [uid(KNEE, 1)]


def test_selection_without_conditions_matches_every_candidate() -> None:
    metadata = brain_mr()
    assert matched_keys({}, metadata) == list(
        select(parse_rules(""), metadata, metadata.series_images())
    )


# -- derived attributes ------------------------------------------------------------------


def test_derived_attributes() -> None:
    assert matched_keys({"conditions": {"SliceCount": {"ge": 30}}}) == [
        uid(BRAIN, 3),
        uid(BRAIN, 8),
    ]
    assert matched_keys({"conditions": {"Orientation": "^SAGITTAL$"}}) == [uid(KNEE, 1)]
    assert matched_keys({"conditions": {"InstanceCount": 40}}) == [uid(BRAIN, 8)]
    assert matched_keys({"conditions": {"TimepointCount": 1, "SeriesNumber": 2}}) == [uid(BRAIN, 2)]
    assert matched_keys({"conditions": {"Spacing": {"equals": [0.9, 0.9, 5]}}, "pick": "first"})
    assert matched_keys({"conditions": {"PixelType": "int16", "StackCount": 1}})
    assert matched_keys({"conditions": {"ImageFile": r"\.3\.nii\.gz$"}}) == [uid(BRAIN, 3)]
    assert matched_keys({"conditions": {"VolumeKey": {"equals": uid(BRAIN, 8)}}}) == [uid(BRAIN, 8)]


def test_stack_number_chooses_a_stack_of_a_multi_stack_series() -> None:
    series = make_series(uid(BRAIN, 1), 1, "DWI", stacks=3)
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))
    assert matched_keys({"conditions": {"StackNumber": {"ge": 2}}}, metadata) == [
        f"{uid(BRAIN, 1)}-2",
        f"{uid(BRAIN, 1)}-3",
    ]
    assert matched_keys({"conditions": {"StackCount": 3}, "pick": "last"}, metadata) == [
        f"{uid(BRAIN, 1)}-3"
    ]


# -- pick and orderBy --------------------------------------------------------------------


def test_pick_first_and_last_in_default_order() -> None:
    t1c = {"conditions": {"SeriesDescription": "T1c", "StudyDescription": "BRAIN"}}
    assert matched_keys({**t1c, "pick": "first"}) == [uid(BRAIN, 3)]
    assert matched_keys({**t1c, "pick": "last"}) == [uid(BRAIN, 6)]
    assert matched_keys({**t1c, "pick": "all"}) == [uid(BRAIN, n) for n in (3, 4, 5, 6)]


def test_order_by_descending_picks_the_largest() -> None:
    selection = {
        "conditions": {"StudyDescription": "BRAIN"},
        "pick": "first",
        "orderBy": [{"attribute": "SliceCount", "descending": True}],
    }
    assert matched_keys(selection) == [uid(BRAIN, 8)]  # 40 slices


def test_order_by_ties_fall_back_to_default_order() -> None:
    selection = {"conditions": {"SliceCount": 24}, "orderBy": ["SliceCount"]}
    assert matched_keys(selection) == [uid(KNEE, 1)] + [uid(BRAIN, n) for n in (2, 4, 5, 6, 7)]


def test_order_by_several_keys() -> None:
    selection = {
        "conditions": {"Modality": "MR"},
        "orderBy": [
            {"attribute": "Orientation", "descending": True},
            {"attribute": "SliceCount"},
            {"attribute": "SeriesNumber", "descending": True},
        ],
    }
    expected = [uid(KNEE, 1)] + [uid(BRAIN, n) for n in (7, 6, 5, 4, 2, 3, 8)]
    assert matched_keys(selection) == expected


def test_order_by_puts_missing_values_last_either_way() -> None:
    series = [
        make_series(uid(BRAIN, n), n, "AX", extra={"EchoTime": t} if t else None)
        for n, t in ((1, None), (2, 30), (3, 90))
    ]
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", series))
    ascending = {"orderBy": ["EchoTime"]}
    descending = {"orderBy": [{"attribute": "EchoTime", "descending": True}]}
    assert matched_keys(ascending, metadata) == [uid(BRAIN, n) for n in (2, 3, 1)]
    assert matched_keys(descending, metadata) == [uid(BRAIN, n) for n in (3, 2, 1)]


def test_order_is_numeric_for_numeric_text() -> None:
    series = [
        make_series(uid(BRAIN, n), n, "AX", extra={"SliceThickness": t})
        for n, t in ((1, "10"), (2, "9.5"), (3, "100"))
    ]
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", series))
    assert matched_keys({"orderBy": ["SliceThickness"]}, metadata) == [
        uid(BRAIN, n) for n in (2, 1, 3)
    ]


def test_default_order_uses_study_date_then_series_number_then_uid() -> None:
    late = make_study(
        f"{ROOT}.7",
        "B",
        [make_series(f"{ROOT}.7.1", 2, "x"), make_series(f"{ROOT}.7.2", 1, "x")],
        date="20240105",
    )
    early = make_study(
        f"{ROOT}.8",
        "A",
        [make_series(f"{ROOT}.8.9", 1, "x"), make_series(f"{ROOT}.8.1", 1, "x")],
        date="20240104",
    )
    metadata = make_metadata(late, early)
    assert matched_keys({}, metadata) == [
        f"{ROOT}.8.1",
        f"{ROOT}.8.9",
        f"{ROOT}.7.2",
        f"{ROOT}.7.1",
    ]


# -- YAML --------------------------------------------------------------------------------

YAML_RULES = """
# The Clara example, in YAML, with an extension
selections:
  - name: T1C
    conditions:
      Modality: (?i)^MR
      StudyDescription: (?i)Brain
      ImageType: [ORIGINAL, PRIMARY]
      SeriesDescription: ^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*
    where:
      SliceCount: {ge: 10}
"""


def test_yaml_rules_by_file_name_and_by_content() -> None:
    metadata = brain_mr()
    expected = {"T1C": {uid(BRAIN, 3): f"{uid(BRAIN, 3)}.nii.gz"}}
    for source in ("rules.yaml", "rules.yml", "rules"):
        rules = parse_rules(YAML_RULES, source)
        assert select(rules, metadata, metadata.series_images()) == expected


def test_yaml_hexadecimal_tags_need_no_quotes() -> None:
    series = make_series(uid(BRAIN, 1), 1, "AX T1")
    series.attributes["00100020"] = {"vr": "LO", "Value": ["P1"]}
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))
    text = "selections:\n- name: a\n  conditions:\n    00100020: ^P1$\n    0008103E: T1\n"
    rules = parse_rules(text, "rules.yaml")
    assert select(rules, metadata, metadata.series_images()) == {
        "a": {uid(BRAIN, 1): f"{uid(BRAIN, 1)}.nii.gz"}
    }


def test_yaml_file_may_hold_json() -> None:
    rules = parse_rules('{"selections": [{"name": "a"}]}', "rules.yaml")
    assert rules.names == ["a"]


def test_yaml_with_only_comments_is_empty_rules() -> None:
    assert parse_rules("# nothing yet\n", "rules.yaml").is_empty


def test_rules_from_data_accepts_decoded_rules() -> None:
    data = json.loads('{"selections": [{"name": "a", "conditions": {"Modality": "MR"}}]}')
    assert rules_from_data(data).names == ["a"]
    assert rules_from_data(None).is_empty
