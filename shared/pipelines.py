"""Pipeline definitions: what the parser and selector do for a job, and where results go.

seriesflow's own format (YAML or JSON)::

    name: brain_t1c                       # required; what AE titles map to
    id: 0fcdcdea89c6456fb20abc7379c54ef2  # optional; a Clara pipeline-id it answers to
    image-format: nii.gz                  # mhd (default), nii, nii.gz
    rules: {selections: [...]}            # inline rules, or
    rules-file: rules/brain.json          # a rules file, relative to this file
    routes:                               # optional: send selected series on
      - selection: T1C
        destinations: [PACS]

A Clara pipeline definition (``api-version``, ``name``, ``operators``) registers too: its
``dicom-parser`` and ``series-selector`` operators become a pipeline with the image format
and rules given in the operators' ``variables`` (``NVIDIA_CLARA_IMAGE_FORMAT``,
``NVIDIA_CLARA_SELECTION_RULES_BASE64``, ``NVIDIA_CLARA_SELECTION_RULES_FILE``), else the
defaults. Every definition is validated when loaded, rules included.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import InvalidInputError, SeriesflowError
from shared.identifiers import validate_name
from shared.selection import SelectionRules, load_rules_file, parse_rules, rules_from_data
from shared.volumes.writer import ImageFormat


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    selection: str
    destinations: tuple[str, ...]

    @field_validator("destinations")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(validate_name(v, "destination") for v in value)


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    id: str | None = None
    image_format: ImageFormat = "mhd"
    rules: SelectionRules = Field(default_factory=lambda: parse_rules(None))
    routes: tuple[Route, ...] = ()
    source: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "pipeline")

    def destinations(self) -> set[str]:
        return {d for route in self.routes for d in route.destinations}


def parse_pipeline(data: Any, source: str, base: Path | None = None) -> Pipeline:
    """A pipeline from a decoded document (seriesflow's format or Clara's)."""
    if not isinstance(data, dict):
        raise InvalidInputError(f"{source}: a pipeline definition must be a mapping")
    try:
        if "operators" in data:
            return _clara_pipeline(data, source, base)
        known = {"name", "id", "image-format", "rules", "rules-file", "routes", "description"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"{source}: unknown key(s) {', '.join(unknown)}")
        rules = _rules(data, source, base)
        return Pipeline(
            name=data.get("name"),
            id=None if data.get("id") is None else str(data["id"]),
            image_format=data.get("image-format", "mhd"),
            rules=rules,
            routes=tuple(Route.model_validate(r) for r in data.get("routes") or ()),
            source=source,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = " > ".join(str(p) for p in first["loc"])
        raise InvalidInputError(
            f"{source}: {where}: {str(first['msg']).removeprefix('Value error, ')}"
        ) from exc
    except SeriesflowError as exc:
        if exc.reason.startswith(source):
            raise
        raise InvalidInputError(f"{source}: {exc.reason}") from exc


def _rules(data: dict[str, Any], source: str, base: Path | None) -> SelectionRules:
    if "rules" in data and "rules-file" in data:
        raise InvalidInputError(f"{source}: give rules or rules-file, not both")
    if "rules-file" in data:
        path = Path(str(data["rules-file"]))
        return load_rules_file(path if path.is_absolute() or base is None else base / path)
    if "rules" in data:
        return rules_from_data(data["rules"], source=f"{source} > rules")
    return parse_rules(None)


def _clara_pipeline(data: dict[str, Any], source: str, base: Path | None) -> Pipeline:
    operators = data.get("operators") or []
    images = " ".join(
        str((op.get("container") or {}).get("image", ""))
        for op in operators
        if isinstance(op, dict)
    )
    if "dicom-parser" not in images and "series-selector" not in images:
        raise InvalidInputError(
            f"{source}: a Clara pipeline needs a dicom-parser or series-selector operator"
        )
    variables: dict[str, str] = {}
    for op in operators:
        if isinstance(op, dict):
            for key, value in (op.get("variables") or {}).items():
                variables[str(key)] = str(value)
    rules = parse_rules(None)
    if variables.get("NVIDIA_CLARA_SELECTION_RULES_BASE64"):
        try:
            text = base64.b64decode(variables["NVIDIA_CLARA_SELECTION_RULES_BASE64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError(
                f"{source}: NVIDIA_CLARA_SELECTION_RULES_BASE64 is not Base64"
            ) from exc
        rules = parse_rules(text, source=f"{source} > NVIDIA_CLARA_SELECTION_RULES_BASE64")
    elif variables.get("NVIDIA_CLARA_SELECTION_RULES_FILE"):
        path = Path(variables["NVIDIA_CLARA_SELECTION_RULES_FILE"])
        rules = load_rules_file(path if path.is_absolute() or base is None else base / path)
    return Pipeline(
        name=data.get("name"),
        id=None if data.get("id") is None else str(data["id"]),
        image_format=variables.get("NVIDIA_CLARA_IMAGE_FORMAT", "mhd") or "mhd",
        rules=rules,
        source=source,
    )


def load_pipeline_file(path: Path) -> Pipeline:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read pipeline {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path} is not valid YAML: {exc}") from exc
    return parse_pipeline(data, str(path), path.parent)


class PipelineRegistry:
    """The pipelines of a folder, found by name or by Clara pipeline-id."""

    def __init__(self, pipelines: list[Pipeline]) -> None:
        self._by_key: dict[str, Pipeline] = {}
        for pipeline in pipelines:
            for key in filter(None, (pipeline.name, pipeline.id)):
                if key in self._by_key and self._by_key[key] is not pipeline:
                    raise InvalidInputError(
                        f"pipeline {key!r} is defined twice ({self._by_key[key].source}, "
                        f"{pipeline.source})"
                    )
                self._by_key[key] = pipeline

    @classmethod
    def load(cls, folder: Path | None) -> PipelineRegistry:
        if folder is None:
            return cls([])
        if not folder.is_dir():
            raise InvalidInputError(f"pipelines folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml", ".json"})
        return cls([load_pipeline_file(p) for p in files])

    def get(self, key: str) -> Pipeline | None:
        return self._by_key.get(key)

    def all(self) -> list[Pipeline]:
        return sorted({id(p): p for p in self._by_key.values()}.values(), key=lambda p: p.name)
