"""Parsed selection rules: what :func:`shared.selection.parse_rules` returns.

A selection's condition tree is made of three kinds of node:

* :class:`Predicate`: one attribute and the test its values must pass;
* :class:`Group`: ``all`` (every member holds) or ``any`` (at least one holds);
* :class:`Negation`: holds when its member does not.

Clara's flat ``conditions`` object is a :class:`Group` ``all`` of predicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.selection.conditions import ValueTest

Pick = Literal["all", "first", "last"]
PICKS: tuple[Pick, ...] = ("all", "first", "last")


@dataclass(frozen=True)
class Predicate:
    attribute: str
    """The attribute as the rule names it (keyword, derived name or hexadecimal tag)."""
    lookup: str
    """The name of the attribute in a candidate's view."""
    test: ValueTest
    path: str
    """Where the condition is within its selection, e.g. ``conditions > Modality``."""


@dataclass(frozen=True)
class Group:
    op: Literal["all", "any"]
    members: tuple[Node, ...]
    path: str


@dataclass(frozen=True)
class Negation:
    member: Node
    path: str


Node = Predicate | Group | Negation


@dataclass(frozen=True)
class OrderKey:
    attribute: str
    lookup: str
    descending: bool = False

    def __str__(self) -> str:
        return f"{self.attribute} {'descending' if self.descending else 'ascending'}"


@dataclass(frozen=True)
class Selection:
    name: str
    condition: Node
    """``conditions`` and ``where`` together (both must hold)."""
    pick: Pick = "all"
    order_by: tuple[OrderKey, ...] = ()
    description: str | None = None
    location: str = ""
    """Where the selection is in the rules, e.g. ``selections[0] "T1C"``."""


@dataclass(frozen=True)
class SelectionRules:
    selections: tuple[Selection, ...] = field(default_factory=tuple)
    source: str = "rules"

    @property
    def is_empty(self) -> bool:
        """Empty rules select every converted series, each under its own key."""
        return not self.selections

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.selections]
