"""explain: why each candidate was or was not selected."""

from __future__ import annotations

import json

from shared.selection import (
    ConditionCheck,
    SelectionExplanation,
    explain,
    parse_rules,
    render_explanation,
    select,
)

from .selection_support import BRAIN, CLARA_T1C_RULES, KNEE, brain_mr, uid


def clara_explanation() -> SelectionExplanation:
    metadata = brain_mr()
    return explain(
        parse_rules(CLARA_T1C_RULES, "clara-t1c.json"), metadata, metadata.series_images()
    )


def conditions(check: ConditionCheck) -> dict[str, ConditionCheck]:
    """The leaf conditions of a check tree, by attribute."""
    if check.kind == "condition":
        assert check.attribute is not None
        return {check.attribute: check}
    out: dict[str, ConditionCheck] = {}
    for child in check.children:
        out.update(conditions(child))
    return out


def test_result_is_what_select_returns() -> None:
    metadata = brain_mr()
    rules = parse_rules(CLARA_T1C_RULES)
    expl = explain(rules, metadata, metadata.series_images())
    assert expl.result == select(rules, metadata, metadata.series_images())
    assert expl.selections[0].selected == expl.result["T1C"]


def test_every_candidate_has_every_condition_with_reason() -> None:
    expl = clara_explanation()
    (selection,) = expl.selections
    assert selection.name == "T1C"
    assert len(selection.candidates) == 8
    for candidate in selection.candidates:
        checks = conditions(candidate.check)
        assert set(checks) == {"Modality", "StudyDescription", "ImageType", "SeriesDescription"}
        assert candidate.matched == all(c.matched for c in checks.values())


def test_picked_candidate_comes_first_with_matched_reasons() -> None:
    (selection,) = clara_explanation().selections
    first = selection.candidates[0]
    assert (first.key, first.picked, first.matched) == (uid(BRAIN, 3), True, True)
    checks = conditions(first.check)
    assert checks["SeriesDescription"].reason == (
        "SeriesDescription 'AX T1c post' matches regex '^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*'"
    )
    assert checks["ImageType"].reason == (
        "ImageType 'ORIGINAL\\PRIMARY\\AXIAL' has all of ['ORIGINAL', 'PRIMARY']"
    )
    assert checks["ImageType"].actual == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert checks["ImageType"].expected == "has all of ['ORIGINAL', 'PRIMARY']"
    assert [c.key for c in selection.candidates if c.picked] == [uid(BRAIN, 3)]


def test_unmatched_reasons_show_actual_and_expected() -> None:
    (selection,) = clara_explanation().selections
    by_key = {c.key: c for c in selection.candidates}
    flair = conditions(by_key[uid(BRAIN, 8)].check)
    assert not flair["SeriesDescription"].matched
    assert flair["SeriesDescription"].reason == (
        "SeriesDescription 'AX FLAIR' does not match regex "
        "'^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*'"
    )
    assert flair["Modality"].matched
    mpr = conditions(by_key[uid(BRAIN, 6)].check)
    assert mpr["ImageType"].reason == "ImageType 'DERIVED\\SECONDARY' lacks 'ORIGINAL', 'PRIMARY'"
    knee = conditions(by_key[uid(KNEE, 1)].check)
    assert knee["StudyDescription"].reason == (
        "StudyDescription 'MR KNEE LEFT' does not match regex '(?i)Brain'"
    )


def test_missing_attribute_and_operators_are_explained() -> None:
    metadata = brain_mr()
    rules = parse_rules(
        json.dumps(
            {
                "selections": [
                    {
                        "name": "big",
                        "where": {
                            "any": [
                                {"BodyPartExamined": "HEAD"},
                                {"SliceCount": {"ge": 35}},
                            ]
                        },
                    }
                ]
            }
        )
    )
    (selection,) = explain(rules, metadata, metadata.series_images()).selections
    by_key = {c.key: c for c in selection.candidates}
    flair = by_key[uid(BRAIN, 8)].check
    assert (flair.kind, flair.matched, flair.reason) == ("any", True, "1 of 2 hold")
    assert [c.reason for c in flair.children] == [
        "BodyPartExamined is missing",
        "SliceCount 40 is >= 35",
    ]
    t2 = by_key[uid(BRAIN, 7)].check
    assert (t2.matched, t2.reason) == (False, "none of 2 holds")
    assert t2.children[1].reason == "SliceCount 24 is not >= 35"
    assert t2.children[0].actual is None


def test_not_candidates_are_listed_with_reasons() -> None:
    expl = clara_explanation()
    by_uid = {n.series_instance_uid: n for n in expl.not_candidates}
    assert set(by_uid) == {uid(BRAIN, 1), uid(BRAIN, 9)}
    assert by_uid[uid(BRAIN, 1)].reasons == ["localizer: orthogonal slices of a localizer"]
    assert by_uid[uid(BRAIN, 9)].reasons == ["not_an_image: Structured report: no pixel data"]


def test_volume_missing_from_series_images_is_listed() -> None:
    metadata = brain_mr()
    mapping = metadata.series_images()
    del mapping[uid(BRAIN, 3)]
    expl = explain(parse_rules(CLARA_T1C_RULES), metadata, mapping)
    missing = [n for n in expl.not_candidates if n.key == uid(BRAIN, 3)]
    assert len(missing) == 1
    assert "not in series-images.json" in missing[0].reasons[0]
    assert expl.result == {}


def test_empty_rules_explanation() -> None:
    metadata = brain_mr()
    expl = explain(parse_rules(""), metadata, metadata.series_images())
    assert expl.empty_rules
    assert expl.selections == []
    assert expl.result == select(parse_rules(""), metadata, metadata.series_images())
    assert "every candidate is selected under its own key" in render_explanation(expl)


def test_json_form_uses_camel_case() -> None:
    data = json.loads(clara_explanation().model_dump_json())
    assert set(data) == {
        "source",
        "emptyRules",
        "candidates",
        "selections",
        "notCandidates",
        "result",
    }
    assert "seriesInstanceUID" in data["selections"][0]["candidates"][0]
    assert "orderBy" in data["selections"][0]
    assert SelectionExplanation.model_validate(data) == clara_explanation()


def test_rendered_text() -> None:
    text = render_explanation(clara_explanation())
    assert "Rules: clara-t1c.json" in text
    assert 'Selection "T1C" (pick all): 1 matched, 1 selected' in text
    assert f"  SELECTED {uid(BRAIN, 3)}  #3 MR 'AX T1c post'" in text
    assert f"-> {uid(BRAIN, 3)}.nii.gz" in text
    assert (
        "FAIL  SeriesDescription 'AX FLAIR' does not match regex "
        "'^(?=.*T1c)(?!.*(ref|rfmt|[0-9]x[0-9])).*'"
    ) in text
    assert "ok    Modality 'MR' matches regex '(?i)^MR'" in text
    assert "Not selectable:" in text
    assert "localizer: orthogonal slices of a localizer" in text
    assert f"T1C: {uid(BRAIN, 3)} -> {uid(BRAIN, 3)}.nii.gz" in text


def test_rendered_failures_only_hides_conditions_that_held() -> None:
    text = render_explanation(clara_explanation(), failures_only=True)
    assert "ok    Modality" not in text
    assert "FAIL  SeriesDescription 'AX FLAIR'" in text


def test_selection_that_matches_nothing_says_so() -> None:
    metadata = brain_mr()
    rules = parse_rules('{"selections": [{"name": "CT", "conditions": {"Modality": "CT"}}]}')
    expl = explain(rules, metadata, metadata.series_images())
    assert expl.result == {}
    assert "0 matched, 0 selected - left out of selected-images.json" in render_explanation(expl)


def test_listing_order_is_picked_then_other_matches_then_the_rest() -> None:
    metadata = brain_mr()
    rules = parse_rules(
        json.dumps(
            {
                "selections": [
                    {
                        "name": "largest",
                        "conditions": {"StudyDescription": "BRAIN", "SliceCount": {"ge": 24}},
                        "where": {"not": {"SeriesDescription": "T2"}},
                        "pick": "first",
                        "orderBy": [{"attribute": "SliceCount", "descending": True}],
                    }
                ]
            }
        )
    )
    (selection,) = explain(rules, metadata, metadata.series_images()).selections
    assert selection.order_by == ["SliceCount descending"]
    listed = [(c.key, c.matched, c.picked) for c in selection.candidates]
    assert listed == [
        (uid(BRAIN, 8), True, True),
        (uid(BRAIN, 3), True, False),
        *[(uid(BRAIN, n), True, False) for n in (2, 4, 5, 6)],
        (uid(KNEE, 1), False, False),
        (uid(BRAIN, 7), False, False),
    ]
    text = render_explanation(explain(rules, metadata, metadata.series_images()))
    assert "(pick first, orderBy SliceCount descending): 6 matched, 1 selected" in text
    assert "ok    not: the condition does not hold  [where > not]" in text


def test_rendered_negation_shows_the_member_finding() -> None:
    metadata = brain_mr()
    rules = parse_rules(
        '{"selections": [{"name": "not T2", "where": {"not": {"SeriesDescription": "T2"}}}]}'
    )
    expl = explain(rules, metadata, metadata.series_images())
    text = render_explanation(expl)
    assert "ok    not: the condition does not hold  [where > not]" in text
    assert "no    SeriesDescription 'AX FLAIR' does not match regex 'T2'" in text
    failures = render_explanation(expl, failures_only=True)
    assert "FAIL  not: the condition holds  [where > not]" in failures
    assert "yes   SeriesDescription 'AX T2 FSE' matches regex 'T2'" in failures
    assert "AX FLAIR' does not match" not in failures
