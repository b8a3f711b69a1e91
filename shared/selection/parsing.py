"""Selection rules text (JSON or YAML) -> validated :class:`SelectionRules`.

Every problem raises :class:`shared.errors.RulesError` whose ``location`` names the bad
rule, e.g. ``selections[0] "T1C" > conditions > SeriesDescription`` (selections are counted
from 0), and whose reason says what is wrong and in which source.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterator
from difflib import get_close_matches
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when YAML is read (see _yaml_loader), not by every command
    import yaml

from shared.errors import RulesError
from shared.selection.attributes import is_scalar, resolve_attribute, suggest_attribute
from shared.selection.conditions import (
    AllOf,
    Compare,
    CompareOp,
    Contains,
    Equals,
    Exists,
    In,
    Not,
    Range,
    Regex,
    Scalar,
    ValueTest,
)
from shared.selection.rules import (
    PICKS,
    Group,
    Negation,
    Node,
    OrderKey,
    Pick,
    Predicate,
    Selection,
    SelectionRules,
)

OPERATORS = (
    "regex",
    "equals",
    "in",
    "contains",
    "range",
    "lt",
    "le",
    "gt",
    "ge",
    "exists",
    "missing",
    "not",
)
_OPERATOR_ALIASES = {
    "gte": "ge",
    "lte": "le",
    "eq": "equals",
    "equal": "equals",
    "is": "equals",
    "match": "regex",
    "matches": "regex",
    "regexp": "regex",
    "pattern": "regex",
    "between": "range",
    "exist": "exists",
    "contain": "contains",
    "has": "contains",
    "oneOf": "in",
    "any": "in",
    "all": "contains",
}
SELECTION_KEYS = ("name", "description", "conditions", "where", "pick", "orderBy")
TOP_LEVEL_KEYS = ("selections", "description", "$schema")
MAX_NAME_LENGTH = 256


class _Object(dict[str, Any]):
    """A decoded JSON/YAML object that remembers keys given more than once."""

    duplicates: list[str]


def _object_from_pairs(pairs: list[tuple[Any, Any]]) -> _Object:
    obj = _Object()
    obj.duplicates = []
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


@cache
def _yaml_loader() -> type[yaml.SafeLoader]:
    """Safe YAML loading: duplicate keys stay visible to validation, keys stay text.

    PyYAML is imported here, when YAML is first read: rules are JSON more often than not,
    and importing it took a fiftieth of a second of every command's start.
    """
    import yaml

    class YamlLoader(yaml.SafeLoader):
        pass

    YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    return YamlLoader


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Object:
    import yaml

    loader.flatten_mapping(node)
    # Keys are always names, so a scalar key keeps its text: 00100020 stays a tag, not the
    # octal number YAML 1.1 would make of it.
    pairs = []
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, "a key must be a name", key.start_mark
            )
        pairs.append((key.value, loader.construct_object(value, deep=True)))
    return _object_from_pairs(pairs)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(location: str, part: str) -> str:
    return f"{location} > {part}" if location else part


class _Parser:
    """Validation of decoded rules data; knows the source to name in errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, reason: str, location: str = "") -> RulesError:
        return RulesError(f"{reason} (in {self.source})", location)

    def items(self, obj: dict[str, Any], location: str) -> Iterator[tuple[str, Any]]:
        """An object's entries; duplicate or non-string keys are errors."""
        for key in getattr(obj, "duplicates", []):
            raise self.fail(f"key {key!r} is given more than once", _join(location, str(key)))
        for key, value in obj.items():
            if not isinstance(key, str):
                raise self.fail(f"key {key!r} must be a string", location)
            yield key, value

    # -- document and selections -------------------------------------------------------

    def document(self, data: Any) -> SelectionRules:
        if data is None:
            return SelectionRules(source=self.source)
        if not isinstance(data, dict):
            raise self.fail(f"rules must be an object with a 'selections' list, not {_kind(data)}")
        entries = dict(self.items(data, ""))
        if not entries:
            return SelectionRules(source=self.source)
        for key in entries:
            if key not in TOP_LEVEL_KEYS:
                hint = _did_you_mean(key, TOP_LEVEL_KEYS)
                raise self.fail(f"unknown key {key!r}{hint}; rules hold 'selections'", key)
        if "selections" not in entries:
            raise self.fail(
                "missing 'selections': rules must be an object with a 'selections' list"
            )
        raw = entries["selections"]
        if not isinstance(raw, list):
            raise self.fail(f"'selections' must be a list, not {_kind(raw)}", "selections")
        selections: list[Selection] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            selection = self.selection(item, index)
            if selection.name in seen:
                raise self.fail(
                    f"selection name {selection.name!r} is already used by "
                    f"selections[{seen[selection.name]}]; names must be unique",
                    _join(selection.location, "name"),
                )
            seen[selection.name] = index
            selections.append(selection)
        return SelectionRules(tuple(selections), self.source)

    def name(self, raw: Any, location: str) -> str:
        where = _join(location, "name")
        if raw is None:
            raise self.fail("a selection needs a 'name'", location)
        if not isinstance(raw, str):
            raise self.fail(f"'name' must be a string, not {_kind(raw)}", where)
        if not raw.strip():
            raise self.fail("'name' must not be empty", where)
        if raw != raw.strip():
            raise self.fail(f"name {raw!r} must not start or end with a space", where)
        if len(raw) > MAX_NAME_LENGTH:
            raise self.fail(f"'name' must be at most {MAX_NAME_LENGTH} characters", where)
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in raw):
            raise self.fail(f"name {raw!r} must not contain control characters", where)
        return raw

    def selection(self, raw: Any, index: int) -> Selection:
        location = f"selections[{index}]"
        if not isinstance(raw, dict):
            raise self.fail(f"a selection must be an object, not {_kind(raw)}", location)
        entries = dict(self.items(raw, location))
        name = self.name(entries.get("name"), location)
        location = f"{location} {json.dumps(name, ensure_ascii=False)}"
        for key in entries:
            if key not in SELECTION_KEYS:
                hint = _did_you_mean(key, SELECTION_KEYS)
                raise self.fail(
                    f"unknown key {key!r}{hint}; a selection has {', '.join(SELECTION_KEYS)}",
                    _join(location, key),
                )
        description = entries.get("description")
        if description is not None and not isinstance(description, str):
            raise self.fail(
                f"'description' must be a string, not {_kind(description)}",
                _join(location, "description"),
            )
        parts: list[Node] = []
        for key in ("conditions", "where"):
            if key in entries:
                raw_node = entries[key]
                if not isinstance(raw_node, dict):
                    raise self.fail(
                        f"'{key}' must be an object, not {_kind(raw_node)}", _join(location, key)
                    )
                parts.append(self.node(raw_node, location, key))
        # No conditions at all: the selection matches every candidate.
        condition = parts[0] if len(parts) == 1 else Group("all", tuple(parts), "")
        return Selection(
            name=name,
            condition=condition,
            pick=self.pick(entries.get("pick", "all"), _join(location, "pick")),
            order_by=self.order_by(entries.get("orderBy", []), _join(location, "orderBy")),
            description=description,
            location=location,
        )

    def pick(self, raw: Any, location: str) -> Pick:
        for choice in PICKS:
            if raw == choice:
                return choice
        raise self.fail(f"'pick' must be one of {', '.join(PICKS)}, not {_kind(raw)}", location)

    def order_by(self, raw: Any, location: str) -> tuple[OrderKey, ...]:
        if not isinstance(raw, list):
            raw = [raw]
        keys: list[OrderKey] = []
        for index, item in enumerate(raw):
            where = f"{location}[{index}]"
            if isinstance(item, str):
                keys.append(OrderKey(item, self.attribute(item, where)))
                continue
            if not isinstance(item, dict):
                raise self.fail(
                    f"an orderBy entry must be an attribute name or an object, not {_kind(item)}",
                    where,
                )
            entries = dict(self.items(item, where))
            for key in entries:
                if key not in ("attribute", "descending"):
                    raise self.fail(
                        f"unknown key {key!r}; an orderBy entry has attribute, descending",
                        _join(where, key),
                    )
            attribute = entries.get("attribute")
            if not isinstance(attribute, str):
                raise self.fail(
                    f"'attribute' must be an attribute name, not {_kind(attribute)}",
                    _join(where, "attribute"),
                )
            descending = entries.get("descending", False)
            if not isinstance(descending, bool):
                raise self.fail(
                    f"'descending' must be true or false, not {_kind(descending)}",
                    _join(where, "descending"),
                )
            keys.append(OrderKey(attribute, self.attribute(attribute, where), descending))
        return tuple(keys)

    def attribute(self, name: str, location: str) -> str:
        lookup = resolve_attribute(name)
        if lookup is None:
            suggestion = suggest_attribute(name)
            hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
            raise self.fail(
                f"unknown attribute {name!r}{hint}: not a DICOM keyword, a derived attribute "
                "or a tag of 8 hexadecimal digits",
                location,
            )
        return lookup

    # -- condition trees ---------------------------------------------------------------

    def node(self, raw: dict[str, Any], location: str, path: str) -> Node:
        """An object whose keys are group operators or attributes, all of which must hold."""
        members: list[Node] = []
        for key, value in self.items(raw, _join(location, path)):
            where = _join(path, key)
            if key in ("all", "any"):
                members.append(self.group(key, value, location, where))
            elif key == "not":
                if not isinstance(value, dict):
                    raise self.fail(
                        f"'not' must hold an object of conditions, not {_kind(value)}",
                        _join(location, where),
                    )
                members.append(Negation(self.node(value, location, where), where))
            else:
                lookup = self.attribute(key, _join(location, where))
                test = self.value(value, _join(location, where))
                members.append(Predicate(key, lookup, test, where))
        return members[0] if len(members) == 1 else Group("all", tuple(members), path)

    def group(self, op: str, raw: Any, location: str, path: str) -> Group:
        if not isinstance(raw, list) or not raw:
            raise self.fail(
                f"'{op}' must be a non-empty list of condition objects, not {_kind(raw)}",
                _join(location, path),
            )
        members: list[Node] = []
        for index, item in enumerate(raw):
            where = f"{path}[{index}]"
            if not isinstance(item, dict):
                raise self.fail(
                    f"a member of '{op}' must be an object of conditions, not {_kind(item)}",
                    _join(location, where),
                )
            members.append(self.node(item, location, where))
        return Group("all" if op == "all" else "any", tuple(members), path)

    def value(self, raw: Any, location: str) -> ValueTest:
        """A condition value: regex string, list, number, or operator object."""
        if isinstance(raw, str):
            return Regex(self.regex(raw, location))
        if isinstance(raw, list):
            return Contains(self.scalars(raw, location, allow_empty=True))
        if isinstance(raw, dict):
            return self.operators(raw, location)
        if is_scalar(raw):
            return Equals(self.number(raw, location))
        raise self.fail(
            f"a condition must be a regex string, a list of values, a number or an operator "
            f"object, not {_kind(raw)}",
            location,
        )

    def operators(self, raw: dict[str, Any], location: str) -> ValueTest:
        tests: list[ValueTest] = []
        for op, arg in self.items(raw, location):
            where = _join(location, op)
            builder = self._builders().get(op)
            if builder is None:
                alias = _OPERATOR_ALIASES.get(op)
                hint = f" (did you mean {alias!r}?)" if alias else _did_you_mean(op, OPERATORS)
                raise self.fail(
                    f"unknown operator {op!r}{hint}; operators are {', '.join(OPERATORS)}", where
                )
            tests.append(builder(arg, where))
        if not tests:
            raise self.fail("an operator object needs at least one operator", location)
        return tests[0] if len(tests) == 1 else AllOf(tuple(tests))

    def _builders(self) -> dict[str, Callable[[Any, str], ValueTest]]:
        def compare(op: CompareOp) -> Callable[[Any, str], ValueTest]:
            return lambda arg, where: Compare(op, self.number(arg, where))

        return {
            "regex": lambda arg, where: Regex(self.regex(arg, where)),
            "equals": self.equals,
            "in": lambda arg, where: In(self.scalars(arg, where, allow_empty=False)),
            "contains": lambda arg, where: Contains(
                self.scalars(arg if isinstance(arg, list) else [arg], where, allow_empty=False)
            ),
            "range": self.range,
            "lt": compare("lt"),
            "le": compare("le"),
            "gt": compare("gt"),
            "ge": compare("ge"),
            "exists": lambda arg, where: Exists(self.boolean(arg, where)),
            "missing": lambda arg, where: Exists(not self.boolean(arg, where)),
            "not": lambda arg, where: Not(self.value(arg, where)),
        }

    # -- operator arguments ------------------------------------------------------------

    def regex(self, raw: Any, location: str) -> re.Pattern[str]:
        if not isinstance(raw, str):
            raise self.fail(f"a regex must be a string, not {_kind(raw)}", location)
        try:
            return re.compile(raw)
        except re.error as exc:
            raise self.fail(f"invalid regular expression {raw!r}: {exc}", location) from exc

    def number(self, raw: Any, location: str) -> float | int:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise self.fail(f"expected a number, not {_kind(raw)}", location)
        if not math.isfinite(raw):
            raise self.fail(f"expected a finite number, not {raw}", location)
        return raw

    def boolean(self, raw: Any, location: str) -> bool:
        if not isinstance(raw, bool):
            raise self.fail(f"expected true or false, not {_kind(raw)}", location)
        return raw

    def scalar(self, raw: Any, location: str) -> Scalar:
        if isinstance(raw, str):
            return raw
        if is_scalar(raw):
            return self.number(raw, location)
        raise self.fail(f"expected a string or a number, not {_kind(raw)}", location)

    def scalars(self, raw: Any, location: str, *, allow_empty: bool) -> tuple[Scalar, ...]:
        if not isinstance(raw, list):
            raise self.fail(f"expected a list of strings or numbers, not {_kind(raw)}", location)
        if not raw and not allow_empty:
            raise self.fail("expected a non-empty list", location)
        return tuple(self.scalar(item, f"{location}[{i}]") for i, item in enumerate(raw))

    def equals(self, raw: Any, location: str) -> ValueTest:
        if isinstance(raw, list):
            return Equals(self.scalars(raw, location, allow_empty=False))
        return Equals(self.scalar(raw, location))

    def range(self, raw: Any, location: str) -> ValueTest:
        if not isinstance(raw, list) or len(raw) != 2:
            raise self.fail(f"'range' must be a list [low, high], not {_kind(raw)}", location)
        low, high = (
            None if item is None else self.number(item, f"{location}[{i}]")
            for i, item in enumerate(raw)
        )
        if low is None and high is None:
            raise self.fail("'range' needs at least one bound", location)
        if low is not None and high is not None and low > high:
            raise self.fail(f"'range' low {low} is greater than high {high}", location)
        return Range(None if low is None else float(low), None if high is None else float(high))


# -- text ----------------------------------------------------------------------------


def _is_yaml_name(source: str) -> bool:
    return source.lower().endswith((".yaml", ".yml"))


def _decode(text: str, source: str, fail: Callable[[str, str], RulesError]) -> Any:
    """JSON, or YAML for a .yaml/.yml source or text that does not start like JSON."""
    stripped = text.lstrip()
    if not _is_yaml_name(source) and stripped.startswith(("{", "[")):
        try:
            return json.loads(text, object_pairs_hook=_object_from_pairs)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise fail(f"not valid JSON: {exc.msg}", where) from exc
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise fail(f"not valid JSON or YAML: {exc.problem}", where) from exc
    except yaml.YAMLError as exc:
        raise fail(f"not valid JSON or YAML: {exc}", "") from exc


def parse_rules(text: str | bytes | None, source: str = "rules") -> SelectionRules:
    """Parse and validate selection rules.

    ``None``, empty or blank text, ``{}`` and ``{"selections": []}`` are empty rules, which
    select every converted series. ``source`` names where the text came from in error
    messages; a source ending in ``.yaml`` or ``.yml`` is read as YAML, other text as JSON
    when it starts with ``{`` or ``[`` and as YAML otherwise.
    """
    parser = _Parser(source)
    if text is None:
        return SelectionRules(source=source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            reason = f"rules are not UTF-8 text: {exc.reason} at byte {exc.start}"
            raise parser.fail(reason) from exc
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return SelectionRules(source=source)
    return parser.document(_decode(text, source, parser.fail))


def rules_from_data(data: Any, source: str = "rules") -> SelectionRules:
    """Validate rules that are already decoded (e.g. embedded in a YAML configuration)."""
    return _Parser(source).document(data)


def load_rules_file(path: Path) -> SelectionRules:
    """Read and parse a rules file; an unreadable file is a :class:`RulesError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path}: {exc.strerror or exc}") from exc
    return parse_rules(data, str(path))
