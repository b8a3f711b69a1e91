"""Tests on one attribute's values: the operators a condition can use.

Each test takes the attribute's values (``None`` when the candidate does not have the
attribute) and returns an :class:`Outcome`: whether it holds, and a phrase that says why,
such as ``'T2 FLAIR' does not match regex 'T1c'``. The phrase leaves out the attribute's
name; the rule that names the attribute puts it in front.

An attribute that is absent, or present without a value (an empty Type 2 attribute), is
*missing*: no test holds on it except ``exists: false`` / ``missing: true``, and the
negation of a test. A sequence attribute only answers ``exists`` / ``missing``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shared.selection.attributes import (
    as_number,
    joined_text,
    scalar_equal,
    show,
    show_expected,
)

Scalar = str | int | float
Values = Sequence[Any] | None
CompareOp = Literal["lt", "le", "gt", "ge"]

_SYMBOL: dict[CompareOp, str] = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@dataclass(frozen=True)
class Outcome:
    matched: bool
    reason: str


def _missing(values: Values) -> bool:
    return not values


def _is_sequence(values: Sequence[Any]) -> bool:
    return any(isinstance(v, dict | list) for v in values)


def _absent(values: Values) -> Outcome | None:
    """The outcome for a missing or sequence attribute, or None when values can be tested."""
    if values is None or not values:
        return Outcome(False, "is missing")
    if _is_sequence(values):
        return Outcome(False, "is a sequence, which only exists/missing can test")
    return None


class ValueTest:
    """Base class of every operator."""

    def evaluate(self, values: Values) -> Outcome:
        raise NotImplementedError

    def describe(self) -> str:
        """What the test expects, e.g. ``matches regex '(?i)^MR'``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Regex(ValueTest):
    """The regex is searched (``re.search``) in the values joined with backslashes."""

    pattern: re.Pattern[str]

    def evaluate(self, values: Values) -> Outcome:
        if (absent := _absent(values)) is not None:
            return absent
        assert values is not None
        found = self.pattern.search(joined_text(values)) is not None
        verb = "matches" if found else "does not match"
        return Outcome(found, f"{show(values)} {verb} regex {show_expected(self.pattern.pattern)}")

    def describe(self) -> str:
        return f"matches regex {show_expected(self.pattern.pattern)}"


@dataclass(frozen=True)
class Contains(ValueTest):
    """Every listed value is one of the attribute's values (Clara's list condition)."""

    expected: tuple[Scalar, ...]

    def evaluate(self, values: Values) -> Outcome:
        if (absent := _absent(values)) is not None:
            return absent
        assert values is not None
        lacking = [e for e in self.expected if not any(scalar_equal(e, v) for v in values)]
        if lacking:
            return Outcome(False, f"{show(values)} lacks {', '.join(map(show_expected, lacking))}")
        return Outcome(True, f"{show(values)} has all of {show_expected(self.expected)}")

    def describe(self) -> str:
        return f"has all of {show_expected(self.expected)}"


@dataclass(frozen=True)
class Equals(ValueTest):
    """A scalar: the attribute has exactly this one value. A list: exactly these values."""

    expected: Scalar | tuple[Scalar, ...]

    def _expected_list(self) -> tuple[Scalar, ...]:
        return self.expected if isinstance(self.expected, tuple) else (self.expected,)

    def evaluate(self, values: Values) -> Outcome:
        if (absent := _absent(values)) is not None:
            return absent
        assert values is not None
        expected = self._expected_list()
        same = len(values) == len(expected) and all(
            scalar_equal(e, v) for e, v in zip(expected, values, strict=True)
        )
        verb = "equals" if same else "does not equal"
        return Outcome(same, f"{show(values)} {verb} {show_expected(self.expected)}")

    def describe(self) -> str:
        return f"equals {show_expected(self.expected)}"


@dataclass(frozen=True)
class In(ValueTest):
    """At least one of the attribute's values is one of the listed values."""

    expected: tuple[Scalar, ...]

    def evaluate(self, values: Values) -> Outcome:
        if (absent := _absent(values)) is not None:
            return absent
        assert values is not None
        found = any(scalar_equal(e, v) for v in values for e in self.expected)
        verb = "is one of" if found else "is not one of"
        if len(values) > 1:
            verb = "has a value among" if found else "has no value among"
        return Outcome(found, f"{show(values)} {verb} {show_expected(self.expected)}")

    def describe(self) -> str:
        return f"is one of {show_expected(self.expected)}"


def _numbers(values: Sequence[Any]) -> list[float] | None:
    numbers = [as_number(v) for v in values]
    return None if any(n is None for n in numbers) else [n for n in numbers if n is not None]


@dataclass(frozen=True)
class Compare(ValueTest):
    """Every value is a number and compares as asked with ``number``."""

    op: CompareOp
    number: float

    def holds(self, value: float) -> bool:
        if self.op == "lt":
            return value < self.number
        if self.op == "le":
            return value <= self.number
        if self.op == "gt":
            return value > self.number
        return value >= self.number

    def evaluate(self, values: Values) -> Outcome:
        if (absent := _absent(values)) is not None:
            return absent
        assert values is not None
        numbers = _numbers(values)
        if numbers is None:
            return Outcome(False, f"{show(values)} is not a number")
        ok = all(self.holds(n) for n in numbers)
        every = "all " if len(numbers) > 1 else ""
        verb = "is" if ok else "is not"
        return Outcome(ok, f"{show(values)} {verb} {every}{self.describe()}")

    def describe(self) -> str:
        return f"{_SYMBOL[self.op]} {show_expected(self.number)}"


@dataclass(frozen=True)
class Range(ValueTest):
    """Every value is a number within ``[low, high]``, both ends included; None is open."""

    low: float | None
    high: float | None

    def evaluate(self, values: Values) -> Outcome:
        if (absent := _absent(values)) is not None:
            return absent
        assert values is not None
        numbers = _numbers(values)
        if numbers is None:
            return Outcome(False, f"{show(values)} is not a number")
        ok = all(
            (self.low is None or n >= self.low) and (self.high is None or n <= self.high)
            for n in numbers
        )
        every = "all " if len(numbers) > 1 else ""
        verb = "is" if ok else "is not"
        return Outcome(ok, f"{show(values)} {verb} {every}{self.describe()}")

    def describe(self) -> str:
        low = "-inf" if self.low is None else show_expected(self.low)
        high = "inf" if self.high is None else show_expected(self.high)
        return f"in range [{low}, {high}]"


@dataclass(frozen=True)
class Exists(ValueTest):
    """``present=True``: the attribute has a value. ``present=False``: it is missing."""

    present: bool

    def evaluate(self, values: Values) -> Outcome:
        if _missing(values):
            return Outcome(not self.present, "is missing")
        return Outcome(self.present, f"is present ({show(values)})")

    def describe(self) -> str:
        return "exists" if self.present else "is missing"


@dataclass(frozen=True)
class Not(ValueTest):
    """Holds exactly when ``inner`` does not."""

    inner: ValueTest

    def evaluate(self, values: Values) -> Outcome:
        outcome = self.inner.evaluate(values)
        return Outcome(not outcome.matched, f"{outcome.reason} (inverted by not)")

    def describe(self) -> str:
        return f"not ({self.inner.describe()})"


@dataclass(frozen=True)
class AllOf(ValueTest):
    """Several operators in one object: every one must hold."""

    tests: tuple[ValueTest, ...]

    def evaluate(self, values: Values) -> Outcome:
        outcomes = [t.evaluate(values) for t in self.tests]
        reasons = list(dict.fromkeys(o.reason for o in outcomes))
        return Outcome(all(o.matched for o in outcomes), "; ".join(reasons))

    def describe(self) -> str:
        return " and ".join(t.describe() for t in self.tests)
