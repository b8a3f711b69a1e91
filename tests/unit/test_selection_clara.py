"""Clara's selection rules format and semantics, unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.dicom.metadata import DicomMetadata
from shared.selection import DEFAULT_RULES_FILE, load_rules_file, parse_rules, select

from .selection_support import (
    BRAIN,
    CLARA_T1C_RULES,
    KNEE,
    attrs,
    brain_mr,
    make_metadata,
    make_series,
    make_study,
    uid,
)

REPO = Path(__file__).resolve().parents[2]


def one_series(**extra: Any) -> DicomMetadata:
    """A study with one converted MR series whose series attributes include ``extra``."""
    series = make_series(uid(BRAIN, 1), 1, extra.pop("SeriesDescription", "AX T1"), extra=extra)
    return make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))


def selects(conditions: dict[str, Any], metadata: DicomMetadata) -> bool:
    rules = parse_rules(json.dumps({"selections": [{"name": "s", "conditions": conditions}]}))
    return "s" in select(rules, metadata, metadata.series_images())


def test_clara_example_selects_only_the_post_contrast_t1() -> None:
    metadata = brain_mr()
    selected = select(parse_rules(CLARA_T1C_RULES), metadata, metadata.series_images())
    t1c = uid(BRAIN, 3)
    assert selected == {"T1C": {t1c: f"{t1c}.nii.gz"}}


def test_example_rules_file_is_the_clara_example() -> None:
    path = REPO / "examples" / "rules" / "clara-t1c.json"
    assert json.loads(path.read_text()) == json.loads(CLARA_T1C_RULES)
    metadata = brain_mr()
    selected = select(load_rules_file(path), metadata, metadata.series_images())
    assert selected == {"T1C": {uid(BRAIN, 3): f"{uid(BRAIN, 3)}.nii.gz"}}


def test_image_file_name_comes_from_series_images() -> None:
    metadata = brain_mr()
    mapping = {k: f"renamed-{i}.mhd" for i, k in enumerate(metadata.series_images())}
    selected = select(parse_rules(CLARA_T1C_RULES), metadata, mapping)
    assert selected == {"T1C": {uid(BRAIN, 3): mapping[uid(BRAIN, 3)]}}


def test_volume_missing_from_series_images_is_not_a_candidate() -> None:
    metadata = brain_mr()
    mapping = metadata.series_images()
    del mapping[uid(BRAIN, 3)]
    assert select(parse_rules(CLARA_T1C_RULES), metadata, mapping) == {}


def test_selection_that_matches_nothing_is_absent() -> None:
    metadata = brain_mr()
    rules = parse_rules(
        json.dumps(
            {
                "selections": [
                    {"name": "CT", "conditions": {"Modality": "^CT$"}},
                    {"name": "FLAIR", "conditions": {"SeriesDescription": "FLAIR"}},
                ]
            }
        )
    )
    selected = select(rules, metadata, metadata.series_images())
    assert selected == {"FLAIR": {uid(BRAIN, 8): f"{uid(BRAIN, 8)}.nii.gz"}}


def test_conditions_are_anded() -> None:
    metadata = one_series(SeriesDescription="AX T1")
    assert selects({"Modality": "MR", "SeriesDescription": "T1"}, metadata)
    assert not selects({"Modality": "MR", "SeriesDescription": "T2"}, metadata)
    assert not selects({"Modality": "CT", "SeriesDescription": "T1"}, metadata)


def test_regex_is_case_sensitive_unless_it_says_otherwise() -> None:
    metadata = one_series(SeriesDescription="AX T1c post")
    assert selects({"SeriesDescription": "T1c"}, metadata)
    assert not selects({"SeriesDescription": "t1C"}, metadata)
    assert selects({"SeriesDescription": "(?i)t1C"}, metadata)


def test_regex_is_searched_not_anchored() -> None:
    metadata = one_series(SeriesDescription="AX T1c post")
    assert selects({"SeriesDescription": "post"}, metadata)
    assert not selects({"SeriesDescription": "^post"}, metadata)
    assert selects({"SeriesDescription": "^AX T1c post$"}, metadata)


def test_regex_on_multi_valued_attribute_sees_backslash_joined_values() -> None:
    metadata = one_series()  # ImageType ORIGINAL\PRIMARY\AXIAL
    assert selects({"ImageType": "ORIGINAL"}, metadata)
    assert selects({"ImageType": "AXIAL"}, metadata)
    assert selects({"ImageType": r"^ORIGINAL\\PRIMARY\\AXIAL$"}, metadata)
    assert not selects({"ImageType": "^PRIMARY"}, metadata)


def test_regex_on_numbers_uses_their_text() -> None:
    metadata = one_series(SeriesNumber=12, SliceThickness=2.5)
    assert selects({"SeriesNumber": "^12$"}, metadata)
    assert selects({"SliceThickness": r"^2\.5$"}, metadata)
    assert not selects({"SeriesNumber": "^1$"}, metadata)


def test_list_is_element_by_element() -> None:
    axial = one_series(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    non_axial = one_series(ImageType=["ORIGINAL", "PRIMARY", "NON_AXIAL"])
    assert selects({"ImageType": ["AXIAL"]}, axial)
    assert not selects({"ImageType": ["AXIAL"]}, non_axial)
    assert selects({"ImageType": ["NON_AXIAL", "ORIGINAL"]}, non_axial)


def test_list_needs_every_listed_value_in_any_order() -> None:
    metadata = one_series(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert selects({"ImageType": ["AXIAL", "ORIGINAL"]}, metadata)
    assert not selects({"ImageType": ["ORIGINAL", "SECONDARY"]}, metadata)


def test_list_elements_are_compared_exactly() -> None:
    metadata = one_series(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert not selects({"ImageType": ["original"]}, metadata)
    assert not selects({"ImageType": ["ORIG"]}, metadata)
    assert not selects({"ImageType": ["ORIGINAL\\PRIMARY"]}, metadata)


def test_list_of_numbers_compares_numbers() -> None:
    metadata = one_series(PixelSpacing=[0.5, 0.5], EchoNumbers=1)
    assert selects({"PixelSpacing": [0.5]}, metadata)
    assert selects({"EchoNumbers": [1]}, metadata)
    assert selects({"EchoNumbers": ["1"]}, metadata)
    assert not selects({"PixelSpacing": [0.6]}, metadata)


def test_missing_attribute_never_matches() -> None:
    metadata = one_series()
    assert not selects({"BodyPartExamined": ".*"}, metadata)
    assert not selects({"BodyPartExamined": ""}, metadata)
    assert not selects({"BodyPartExamined": []}, metadata)
    assert not selects({"ContrastBolusAgent": ["GADOLINIUM"]}, metadata)


def test_present_but_empty_attribute_counts_as_missing() -> None:
    series = make_series(uid(BRAIN, 1), 1, "AX T1")
    series.attributes.update(attrs(BodyPartExamined=[]))
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))
    assert not selects({"BodyPartExamined": ".*"}, metadata)


def test_empty_list_matches_when_attribute_present() -> None:
    metadata = one_series()
    assert selects({"ImageType": []}, metadata)


def test_hexadecimal_tag_works_like_its_keyword() -> None:
    metadata = one_series(SeriesDescription="AX T1c")
    assert selects({"0008103E": "T1c"}, metadata)
    assert selects({"0008103e": "T1c"}, metadata)
    assert not selects({"0008103E": "T2"}, metadata)


def test_private_tag_can_be_tested_by_hex_key() -> None:
    series = make_series(uid(BRAIN, 1), 1, "AX T1")
    series.attributes["00191010"] = {"vr": "LO", "Value": ["vendor thing"]}
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))
    assert selects({"00191010": "vendor"}, metadata)


def test_study_series_and_volume_attributes_are_all_visible() -> None:
    series = make_series(uid(BRAIN, 1), 1, "DWI", stacks=2)
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))
    rules = parse_rules(
        json.dumps(
            {
                "selections": [
                    {
                        "name": "second echo",
                        "conditions": {
                            "PatientName": "Doe",
                            "SeriesDescription": "DWI",
                            "EchoNumbers": ["2"],
                        },
                    }
                ]
            }
        )
    )
    key = f"{uid(BRAIN, 1)}-2"
    assert select(rules, metadata, metadata.series_images()) == {
        "second echo": {key: f"{key}.nii.gz"}
    }


def test_volume_attributes_override_series_attributes() -> None:
    series = make_series(uid(BRAIN, 1), 1, "AX T1", extra={"EchoTime": 10})
    series.volumes[0].attributes.update(attrs(EchoTime=90))
    metadata = make_metadata(make_study(BRAIN, "MRI BRAIN", [series]))
    assert selects({"EchoTime": {"equals": 90}}, metadata)
    assert not selects({"EchoTime": {"equals": 10}}, metadata)


@pytest.mark.parametrize("text", [None, "", "   \n", b"", "{}", '{"selections": []}', "\ufeff"])
def test_empty_rules_select_every_converted_series_under_its_key(text: str | bytes | None) -> None:
    metadata = brain_mr()
    rules = parse_rules(text)
    assert rules.is_empty
    selected = select(rules, metadata, metadata.series_images())
    converted = [uid(KNEE, 1)] + [uid(BRAIN, n) for n in range(2, 9)]
    # The knee study is older (StudyDate 20240101) and comes first.
    assert list(selected) == converted
    assert selected == {k: {k: f"{k}.nii.gz"} for k in converted}


def test_default_rules_file_is_empty_rules() -> None:
    assert DEFAULT_RULES_FILE == REPO / "shared" / "defaults" / "selection-rules.json"
    assert load_rules_file(DEFAULT_RULES_FILE).is_empty


def test_every_match_is_selected_in_default_order() -> None:
    metadata = brain_mr()
    rules = parse_rules(
        '{"selections": [{"name": "T1c", "conditions": {"SeriesDescription": "T1c"}}]}'
    )
    selected = select(rules, metadata, metadata.series_images())
    assert list(selected["T1c"]) == [
        uid(KNEE, 1),
        uid(BRAIN, 3),
        uid(BRAIN, 4),
        uid(BRAIN, 5),
        uid(BRAIN, 6),
    ]


def test_selection_names_keep_rule_order_in_output() -> None:
    metadata = brain_mr()
    rules = parse_rules(
        '{"selections": [{"name": "b", "conditions": {"SeriesDescription": "FLAIR"}},'
        ' {"name": "a", "conditions": {"SeriesDescription": "T2"}}]}'
    )
    assert list(select(rules, metadata, metadata.series_images())) == ["b", "a"]
