"""Where the rules come from, highest precedence first.

1. a rules file given explicitly (``--rules``);
2. ``NVIDIA_CLARA_SELECTION_RULES_BASE64``: the rules, Base64-encoded;
3. ``NVIDIA_CLARA_SELECTION_RULES_FILE``: the path of a rules file;
4. Clara's default rules file, ``./config/selection-rules.json`` relative to the working
   directory (:data:`CLARA_RULES_FILE`, where a Clara operator image put its rules with
   ``COPY``), if that file exists;
5. the packaged default rules file, :data:`DEFAULT_RULES_FILE`, which holds empty rules.

An environment variable that is unset or blank counts as not given. Rules that are given
but empty (an empty file, Base64 of nothing) are empty rules, which select every series.
:func:`resolve_rules` does not read the environment itself: the caller passes the values.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from shared.errors import RulesError
from shared.selection.parsing import parse_rules
from shared.selection.rules import SelectionRules

RULES_BASE64_ENV = "NVIDIA_CLARA_SELECTION_RULES_BASE64"
RULES_FILE_ENV = "NVIDIA_CLARA_SELECTION_RULES_FILE"
DEFAULT_RULES_FILE = Path(__file__).resolve().parent.parent / "defaults" / "selection-rules.json"
CLARA_RULES_FILE = Path("config") / "selection-rules.json"
"""Relative: resolved against the working directory when rules are resolved."""


@dataclass(frozen=True)
class RulesSource:
    text: str
    """The rules text, possibly empty."""
    origin: str
    """Where it came from, for a person: ``--rules rules.json``, ``NVIDIA_CLARA_...``."""
    name: str
    """What parse errors name: the file path, or the environment variable."""

    def parse(self) -> SelectionRules:
        return parse_rules(self.text, self.name)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise RulesError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RulesError(f"{what} {path} is not UTF-8 text: {exc.reason}") from exc


def decode_base64_rules(value: str) -> str:
    """The text of Base64-encoded rules; whitespace and line breaks are ignored."""
    compact = "".join(value.split())
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RulesError(f"{RULES_BASE64_ENV} is not valid Base64: {exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulesError(
            f"{RULES_BASE64_ENV} does not decode to UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from exc


def _given(value: str | Path | None) -> bool:
    return value is not None and (isinstance(value, Path) or bool(value.strip()))


def resolve_rules(
    explicit_file: Path | None,
    rules_base64: str | None,
    rules_file: str | Path | None,
    default_file: Path = DEFAULT_RULES_FILE,
    clara_file: Path | None = CLARA_RULES_FILE,
) -> RulesSource:
    """The rules text from the source with the highest precedence that is given.

    Pass the environment variables' raw values (``os.environ.get(...)``); ``None`` or a blank
    string means not set. ``clara_file`` (relative to the working directory) is used when it
    exists; ``None`` skips it. Bad Base64 and unreadable files raise :class:`RulesError`.
    """
    if explicit_file is not None:
        return RulesSource(
            _read(explicit_file, "rules file"), f"--rules {explicit_file}", str(explicit_file)
        )
    if rules_base64 is not None and rules_base64.strip():
        return RulesSource(decode_base64_rules(rules_base64), RULES_BASE64_ENV, RULES_BASE64_ENV)
    if rules_file is not None and _given(rules_file):
        path = Path(rules_file.strip()) if isinstance(rules_file, str) else rules_file
        return RulesSource(
            _read(path, f"rules file ({RULES_FILE_ENV})"), f"{RULES_FILE_ENV}={path}", str(path)
        )
    if clara_file is not None and clara_file.is_file():
        return RulesSource(
            _read(clara_file, "rules file"),
            f"Clara's default rules file {clara_file} (in {Path.cwd()})",
            str(clara_file),
        )
    return RulesSource(
        _read(default_file, "default rules file"),
        f"default rules file {default_file}",
        str(default_file),
    )
