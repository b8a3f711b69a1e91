"""Where the rules come from: --rules > BASE64 > FILE > default."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shared.errors import RulesError
from shared.selection import (
    DEFAULT_RULES_FILE,
    RULES_BASE64_ENV,
    RULES_FILE_ENV,
    resolve_rules,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("explicit", "env", "default"):
        path = tmp_path / f"{name}.json"
        path.write_text(f'{{"selections": [{{"name": "{name}"}}]}}')
        out[name] = path
    return out


def test_explicit_file_wins(files: dict[str, Path]) -> None:
    source = resolve_rules(
        files["explicit"], b64('{"selections": []}'), files["env"], files["default"]
    )
    assert source.parse().names == ["explicit"]
    assert source.origin == f"--rules {files['explicit']}"


def test_base64_comes_before_rules_file(files: dict[str, Path]) -> None:
    text = '{"selections": [{"name": "base64"}]}'
    source = resolve_rules(None, b64(text), str(files["env"]), files["default"])
    assert source.text == text
    assert source.parse().names == ["base64"]
    assert source.origin == RULES_BASE64_ENV


def test_rules_file_comes_before_default(files: dict[str, Path]) -> None:
    source = resolve_rules(None, None, str(files["env"]), files["default"])
    assert source.parse().names == ["env"]
    assert source.origin == f"{RULES_FILE_ENV}={files['env']}"
    assert resolve_rules(None, None, files["env"], files["default"]).parse().names == ["env"]


def test_default_when_nothing_else_is_given(files: dict[str, Path]) -> None:
    source = resolve_rules(None, None, None, files["default"])
    assert source.parse().names == ["default"]
    assert source.origin.startswith("default rules file")


def test_blank_environment_values_count_as_not_set(files: dict[str, Path]) -> None:
    assert resolve_rules(None, "", "", files["default"]).parse().names == ["default"]
    assert resolve_rules(None, "  \n", " ", files["default"]).parse().names == ["default"]


def test_packaged_default_is_empty_rules() -> None:
    source = resolve_rules(None, None, None)
    assert source.name == str(DEFAULT_RULES_FILE)
    assert source.parse().is_empty


def test_base64_of_empty_rules_selects_all(files: dict[str, Path]) -> None:
    source = resolve_rules(None, b64("   "), files["env"], files["default"])
    assert source.parse().is_empty


def test_base64_may_be_wrapped_over_lines(files: dict[str, Path]) -> None:
    text = '{"selections": [{"name": "wrapped", "conditions": {"Modality": "(?i)^MR"}}]}'
    encoded = b64(text)
    wrapped = "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20)) + "\n"
    assert resolve_rules(None, wrapped, None, files["default"]).parse().names == ["wrapped"]


@pytest.mark.parametrize("value", ["not base64!", "abc", "====", "YWJj$"])
def test_bad_base64_is_a_rules_error(value: str, files: dict[str, Path]) -> None:
    with pytest.raises(RulesError, match=f"{RULES_BASE64_ENV} is not valid Base64"):
        resolve_rules(None, value, files["env"], files["default"])


def test_base64_of_non_utf8_is_a_rules_error(files: dict[str, Path]) -> None:
    value = base64.b64encode(b"\xff\xfe{").decode()
    with pytest.raises(RulesError, match="does not decode to UTF-8"):
        resolve_rules(None, value, None, files["default"])


def test_unreadable_files_are_rules_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    absent = tmp_path / "absent.json"
    with pytest.raises(RulesError, match=r"cannot read rules file .*absent\.json"):
        resolve_rules(absent, None, None, files["default"])
    with pytest.raises(RulesError, match=f"cannot read rules file \\({RULES_FILE_ENV}\\)"):
        resolve_rules(None, None, str(absent), files["default"])
    with pytest.raises(RulesError, match="cannot read default rules file"):
        resolve_rules(None, None, None, absent)


def test_parse_errors_name_the_source(files: dict[str, Path]) -> None:
    source = resolve_rules(
        None, b64('{"selections": [{"name": "a", "conditions": {"X": 1}}]}'), None, files["default"]
    )
    with pytest.raises(RulesError) as info:
        source.parse()
    assert info.value.location == 'selections[0] "a" > conditions > X'
    assert RULES_BASE64_ENV in info.value.reason


def test_yaml_rules_file_is_read_as_yaml(tmp_path: Path, files: dict[str, Path]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("selections:\n  - name: yaml\n    conditions: {Modality: MR}\n")
    assert resolve_rules(path, None, None, files["default"]).parse().names == ["yaml"]
