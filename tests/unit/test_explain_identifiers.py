"""explain without patient identifiers: what the config API answers unless asked and allowed."""

from __future__ import annotations

import json

from shared.selection import ConditionCheck, explain, parse_rules, render_explanation
from shared.selection.explain import WITHHELD, is_identifying, withhold_identifiers

from .selection_support import brain_mr

RULES = {
    "selections": [
        {
            "name": "jane",
            "conditions": {
                "PatientName": "(?i)doe",
                "PatientID": "^P",
                "StudyDescription": "(?i)brain",
                "Modality": "MR",
            },
            "where": {"not": {"PatientName": {"equals": "Nobody"}}},
        }
    ]
}


def leaves(check: ConditionCheck) -> list[ConditionCheck]:
    if check.kind == "condition":
        return [check]
    return [leaf for child in check.children for leaf in leaves(child)]


def test_identifying_attributes() -> None:
    for name in ("PatientName", "00100010", "PatientID", "PatientBirthDate", "StudyDate"):
        assert is_identifying(name), name
    for name in ("AccessionNumber", "ReferringPhysicianName", "InstitutionName", "00091001"):
        assert is_identifying(name), name
    for name in ("Modality", "SeriesDescription", "ImageType", "SliceCount", "0008103E"):
        assert not is_identifying(name), name


def test_withheld_explanation_keeps_the_outcome_but_not_the_values() -> None:
    metadata = brain_mr()
    rules = parse_rules(json.dumps(RULES))
    full = explain(rules, metadata, metadata.series_images())
    assert "Doe^Jane" in full.model_dump_json()
    withheld = withhold_identifiers(full)
    dumped = withheld.model_dump_json()
    text = render_explanation(withheld)
    for value in ("Doe^Jane", "Jane", "'P1'"):
        assert value not in dumped, value
        assert value not in text, value
    assert withheld.result == full.result
    assert [c.matched for c in withheld.selections[0].candidates] == [
        c.matched for c in full.selections[0].candidates
    ]
    first = withheld.selections[0].candidates[0].check
    reasons = {c.reason: c for c in leaves(first)}
    regex = reasons[f"PatientName {WITHHELD} matches regex '(?i)doe'"]
    assert regex.withheld and regex.actual is None
    assert f"PatientName {WITHHELD} does not equal 'Nobody'" in reasons
    modality = reasons["Modality 'MR' matches regex 'MR'"]
    assert not modality.withheld and modality.actual == ["MR"]
    assert WITHHELD in text
    assert full.model_dump_json() != dumped  # the original is untouched
    assert "Doe^Jane" in full.model_dump_json()
