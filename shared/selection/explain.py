"""Why each candidate was or was not selected.

:func:`explain` evaluates every condition of every selection on every candidate and records
the outcome with its reason (``SeriesDescription 'T2 FLAIR' does not match regex 'T1c'``),
which candidates were picked, and which series were never candidates and why.
:func:`render_explanation` prints that for a terminal.

:func:`withhold_identifiers` removes the values of patient-identifying attributes from an
explanation (for answers that leave the machine: the config API withholds them unless the
caller asks and may see them). Identifying are: the Patient group (0010,xxxx), person
names (PN), dates (DA, DT), the attributes of :data:`IDENTIFYING_KEYWORDS`, private tags
and tags the dictionary does not know. Their checks keep ``matched`` and ``expected``
(the rule's own text) but lose ``actual`` and the value in ``reason``, and say ``withheld``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydicom.datadict import dictionary_VR, tag_for_keyword

from shared.dicom.metadata import DicomMetadata
from shared.selection.attributes import DERIVED_ATTRIBUTES, resolve_attribute, show
from shared.selection.candidates import Candidate, non_candidates
from shared.selection.engine import Evaluation, candidates_in_order, choose, evaluate, select_all
from shared.selection.ordering import order_candidates
from shared.selection.rules import Selection, SelectionRules


class _Model(BaseModel):
    """Fields are snake_case in Python and camelCase in JSON, like dicom-metadata.json."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class ConditionCheck(_Model):
    """One condition (or group of conditions) evaluated on one candidate."""

    kind: Literal["condition", "all", "any", "not"]
    path: str = Field(
        description="Where the condition is in its selection, e.g. 'conditions > Modality'"
    )
    matched: bool
    reason: str = Field(description="Why, e.g. \"Modality 'CT' does not match regex '^MR'\"")
    attribute: str | None = None
    expected: str | None = Field(default=None, description="What the condition asks for")
    actual: list[Any] | None = Field(
        default=None, description="The values tested; null when the attribute is missing"
    )
    children: list[ConditionCheck] = Field(default_factory=list)
    withheld: bool = Field(
        default=False, description="True when the values were withheld (patient identifiers)"
    )


class CandidateCheck(_Model):
    key: str
    image: str
    series_instance_uid: str = Field(alias="seriesInstanceUID")
    label: str = Field(description="Series number, modality and description")
    matched: bool
    picked: bool
    check: ConditionCheck


class SelectionCheck(_Model):
    name: str
    pick: str
    order_by: list[str]
    selected: dict[str, str] = Field(description="What selected-images.json holds for it")
    candidates: list[CandidateCheck] = Field(description="Every candidate, in order")


class NonCandidateInfo(_Model):
    series_instance_uid: str = Field(alias="seriesInstanceUID")
    key: str | None = None
    label: str
    reasons: list[str]


class SelectionExplanation(_Model):
    source: str
    empty_rules: bool = Field(
        description="True when the rules are empty: every candidate is selected under its own key"
    )
    candidates: list[str] = Field(description="Keys of every candidate volume, in order")
    selections: list[SelectionCheck]
    not_candidates: list[NonCandidateInfo]
    result: dict[str, dict[str, str]] = Field(description="selected-images.json")


def _check(evaluation: Evaluation) -> ConditionCheck:
    return ConditionCheck(
        kind=evaluation.kind,
        path=evaluation.path,
        matched=evaluation.matched,
        reason=evaluation.reason,
        attribute=evaluation.attribute,
        expected=evaluation.expected,
        actual=None if evaluation.actual is None else list(evaluation.actual),
        children=[_check(c) for c in evaluation.children],
    )


def _explain_selection(selection: Selection, candidates: list[Candidate]) -> SelectionCheck:
    evaluations = {c.key: (c, evaluate(selection.condition, c.view)) for c in candidates}
    matched = [c for c, e in evaluations.values() if e.matched]
    chosen = choose(selection, matched)
    picked = {c.key for c in chosen}
    # Picked candidates first, then the other matches, then the rest, each in order.
    order = [c.key for c in chosen]
    order += [c.key for c in order_candidates(matched, selection.order_by) if c.key not in picked]
    listed = set(order)
    order += [c.key for c in candidates if c.key not in listed]
    return SelectionCheck(
        name=selection.name,
        pick=selection.pick,
        order_by=[str(k) for k in selection.order_by],
        selected={c.key: c.image for c in chosen},
        candidates=[
            CandidateCheck(
                key=key,
                image=candidate.image,
                series_instance_uid=candidate.series_uid,
                label=candidate.label,
                matched=evaluation.matched,
                picked=key in picked,
                check=_check(evaluation),
            )
            for key in order
            for candidate, evaluation in [evaluations[key]]
        ],
    )


def explain(
    rules: SelectionRules, metadata: DicomMetadata, series_images: Mapping[str, str]
) -> SelectionExplanation:
    """Evaluate ``rules`` like :func:`shared.selection.select`, keeping every reason."""
    candidates = candidates_in_order(metadata, series_images)
    selections = [_explain_selection(s, candidates) for s in rules.selections]
    if rules.is_empty:
        result = select_all(candidates)
    else:
        result = {s.name: s.selected for s in selections if s.selected}
    return SelectionExplanation(
        source=rules.source,
        empty_rules=rules.is_empty,
        candidates=[c.key for c in candidates],
        selections=selections,
        not_candidates=[
            NonCandidateInfo(
                series_instance_uid=n.series_uid, key=n.key, label=n.label, reasons=list(n.reasons)
            )
            for n in non_candidates(metadata, series_images)
        ],
        result=result,
    )


# -- patient identifiers ---------------------------------------------------------------

IDENTIFYING_KEYWORDS = frozenset(
    {
        "AccessionNumber",
        "StudyID",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "RequestAttributesSequence",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ReferencedPatientSequence",
    }
)
"""Identifying attributes outside the Patient group, person names and dates."""
WITHHELD = "(withheld)"
_IDENTIFYING_VRS = frozenset({"PN", "DA", "DT"})


def is_identifying(attribute: str) -> bool:
    """True when ``attribute`` (a rule's keyword, tag or derived name) may identify a patient."""
    if attribute in DERIVED_ATTRIBUTES:
        return False
    keyword = resolve_attribute(attribute)
    tag = tag_for_keyword(keyword) if keyword is not None else None
    if tag is None:  # private or unknown: nobody can tell what it holds
        return True
    if keyword in IDENTIFYING_KEYWORDS or tag >> 16 == 0x0010:
        return True
    try:
        return dictionary_VR(tag) in _IDENTIFYING_VRS
    except KeyError:
        return True


def _withhold(check: ConditionCheck) -> ConditionCheck:
    children = [_withhold(c) for c in check.children]
    if check.kind != "condition" or check.attribute is None:
        return check.model_copy(update={"children": children})
    if not is_identifying(check.attribute) or check.actual is None:
        return check  # a missing attribute shows no value
    shown = show(check.actual)
    reason = check.reason.replace(shown, WITHHELD) if shown else check.reason
    if any(str(v) and str(v) in reason for v in check.actual):
        verb = "holds" if check.matched else "does not hold"
        reason = f"{check.attribute} {WITHHELD}: the condition {verb}"
    return check.model_copy(update={"actual": None, "reason": reason, "withheld": True})


def withhold_identifiers(explanation: SelectionExplanation) -> SelectionExplanation:
    """``explanation`` without the values of patient-identifying attributes."""
    selections = [
        selection.model_copy(
            update={
                "candidates": [
                    c.model_copy(update={"check": _withhold(c.check)}) for c in selection.candidates
                ]
            }
        )
        for selection in explanation.selections
    ]
    return explanation.model_copy(update={"selections": selections})


# -- text -------------------------------------------------------------------------------


def _mark(matched: bool, negated: bool) -> str:
    if negated:  # under a "not", the member's own finding: the "not" says what it means
        return "yes " if matched else "no  "
    return "ok  " if matched else "FAIL"


def _render_check(
    check: ConditionCheck,
    indent: str,
    lines: list[str],
    failures_only: bool,
    *,
    root: bool = False,
    negated: bool = False,
) -> None:
    if root and check.kind == "all" and check.path in ("", "conditions", "where"):
        # A selection's own conditions must all hold: list them directly.
        for child in check.children:
            _render_check(child, indent, lines, failures_only, root=True)
        return
    if failures_only and check.matched != negated:
        return
    label = f"{check.kind}: " if check.kind in ("all", "any") else ""
    where = f"  [{check.path}]" if check.kind != "condition" and check.path else ""
    lines.append(f"{indent}{_mark(check.matched, negated)}  {label}{check.reason}{where}")
    for child in check.children:
        inner_negated = negated != (check.kind == "not")
        _render_check(child, indent + "      ", lines, failures_only, negated=inner_negated)


def render_explanation(explanation: SelectionExplanation, *, failures_only: bool = False) -> str:
    """The explanation as plain text. ``failures_only`` hides conditions that held."""
    lines = [f"Rules: {explanation.source}"]
    lines.append(
        f"{len(explanation.candidates)} candidate volume(s); "
        f"{len(explanation.not_candidates)} series or volume(s) not selectable."
    )
    if explanation.empty_rules:
        lines.append("")
        lines.append("The rules are empty: every candidate is selected under its own key.")
    for selection in explanation.selections:
        lines.append("")
        count = len(selection.selected)
        order = f", orderBy {', '.join(selection.order_by)}" if selection.order_by else ""
        matched = sum(c.matched for c in selection.candidates)
        name = json.dumps(selection.name, ensure_ascii=False)
        lines.append(
            f"Selection {name} (pick {selection.pick}{order}): "
            f"{matched} matched, {count} selected"
            + ("" if count else " - left out of selected-images.json")
        )
        for candidate in selection.candidates:
            status = "SELECTED" if candidate.picked else "matched" if candidate.matched else "no"
            lines.append(f"  {status:<8} {candidate.key}  {candidate.label}".rstrip())
            if candidate.picked:
                lines.append(f"           -> {candidate.image}")
            _render_check(candidate.check, "           ", lines, failures_only, root=True)
    if explanation.not_candidates:
        lines.append("")
        lines.append("Not selectable:")
        for item in explanation.not_candidates:
            key = f" (volume {item.key})" if item.key else ""
            lines.append(f"  {item.series_instance_uid}{key}  {item.label}".rstrip())
            lines.extend(f"           {reason}" for reason in item.reasons)
    lines.append("")
    lines.append("Result (selected-images.json):")
    if explanation.result:
        for name, images in explanation.result.items():
            for key, image in images.items():
                lines.append(f"  {name}: {key} -> {image}")
    else:
        lines.append("  (nothing selected)")
    return "\n".join(lines) + "\n"
