"""Rules x candidates -> ``selected-images.json``.

Output: ``{"<selection name>": {"<volume key>": "<image file name>"}}``, selections in the
order of the rules, keys in the order of :mod:`shared.selection.ordering`. As in Clara, a
selection that matches nothing is left out of the output. Empty rules select every
candidate under its own key: ``{"<key>": {"<key>": "<image>"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.dicom.metadata import DicomMetadata
from shared.selection.candidates import Candidate, build_candidates
from shared.selection.ordering import order_candidates
from shared.selection.rules import Group, Negation, Node, Predicate, Selection, SelectionRules

SelectedImages = dict[str, dict[str, str]]


@dataclass(frozen=True)
class Evaluation:
    """One node of a condition tree evaluated on one candidate."""

    kind: Literal["condition", "all", "any", "not"]
    matched: bool
    path: str
    reason: str
    attribute: str | None = None
    expected: str | None = None
    actual: tuple[Any, ...] | None = None
    children: tuple[Evaluation, ...] = ()


def evaluate(node: Node, view: Mapping[str, Sequence[Any]]) -> Evaluation:
    """Evaluate every condition of ``node`` (no short cut, so each one can be explained)."""
    if isinstance(node, Predicate):
        values = view.get(node.lookup)
        outcome = node.test.evaluate(values)
        return Evaluation(
            "condition",
            outcome.matched,
            node.path,
            f"{node.attribute} {outcome.reason}",
            node.attribute,
            node.test.describe(),
            None if values is None else tuple(values),
        )
    if isinstance(node, Negation):
        inner = evaluate(node.member, view)
        verb = "holds" if inner.matched else "does not hold"
        return Evaluation(
            "not", not inner.matched, node.path, f"not: the condition {verb}", children=(inner,)
        )
    children = tuple(evaluate(member, view) for member in node.members)
    held = sum(c.matched for c in children)
    return Evaluation(
        node.op, _group_holds(node, held), node.path, _group_reason(node, held), children=children
    )


def _group_holds(group: Group, held: int) -> bool:
    return held == len(group.members) if group.op == "all" else held > 0


def _group_reason(group: Group, held: int) -> str:
    total = len(group.members)
    if total == 0:
        return "no conditions: matches every candidate"
    failed = total - held
    if group.op == "all":
        return f"all of {total} hold" if not failed else f"{failed} of {total} do not hold"
    return f"{held} of {total} hold" if held else f"none of {total} holds"


def matches(selection: Selection, candidate: Candidate) -> bool:
    return evaluate(selection.condition, candidate.view).matched


def choose(selection: Selection, matched: Sequence[Candidate]) -> list[Candidate]:
    """The matched candidates the selection keeps, in order (see ``pick`` and ``orderBy``)."""
    ordered = order_candidates(matched, selection.order_by)
    if selection.pick == "first":
        return ordered[:1]
    if selection.pick == "last":
        return ordered[-1:]
    return ordered


def candidates_in_order(
    metadata: DicomMetadata, series_images: Mapping[str, str]
) -> list[Candidate]:
    """Every candidate, in the default order (see :mod:`shared.selection.ordering`)."""
    return order_candidates(build_candidates(metadata, series_images))


def select_all(candidates: Sequence[Candidate]) -> SelectedImages:
    """What empty rules select: every candidate under its own key."""
    return {c.key: {c.key: c.image} for c in order_candidates(candidates)}


def select(
    rules: SelectionRules, metadata: DicomMetadata, series_images: Mapping[str, str]
) -> SelectedImages:
    """The ``selected-images.json`` mapping for ``rules``."""
    candidates = candidates_in_order(metadata, series_images)
    if rules.is_empty:
        return select_all(candidates)
    out: SelectedImages = {}
    for selection in rules.selections:
        chosen = choose(selection, [c for c in candidates if matches(selection, c)])
        if chosen:
            out[selection.name] = {c.key: c.image for c in chosen}
    return out
