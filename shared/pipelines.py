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
``NVIDIA_CLARA_SELECTION_RULES_BASE64``, ``NVIDIA_CLARA_SELECTION_RULES_FILE``, in the
operators' precedence). Without them the rules are what the Clara selector image read:
``./config/selection-rules.json`` in the working directory of the service that selects,
if present, else the packaged default (:func:`shared.selection.resolve_rules`).

Clara pipeline ids: a Clara adapter file's ``pipeline-mappings`` name a ``pipeline-id``
that Clara's ``create pipelines`` answered. A pipeline answers to its ``name`` and to its
``id``; a Clara definition never carries one, so the id comes from

- a ``pipeline-ids`` document in the pipelines folder (``pipeline-ids: {<id>: <name>}``),
  which keeps the ids an existing installation already uses; or
- registering it through the REST API (``POST /api/v1/pipelines``), which stores and
  answers an ``id``: the one given in the body, else one derived from the name
  (:func:`with_pipeline_id`), the same every time.

Every definition is validated when loaded, rules included. Unknown keys are errors naming
their path, with the key most likely meant (``operators[1].variabels: unknown key; did
you mean variables?``), and so are unknown ``NVIDIA_CLARA_*`` variables.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import InvalidInputError, SeriesflowError
from shared.identifiers import validate_name
from shared.selection import (
    RULES_BASE64_ENV,
    RULES_FILE_ENV,
    SelectionRules,
    load_rules_file,
    parse_rules,
    resolve_rules,
    rules_from_data,
)
from shared.strict_keys import unknown_key, unknown_keys
from shared.volumes.writer import ImageFormat, parse_image_format


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
        errors = unknown_keys(data, known)
        for index, route in enumerate(data.get("routes") or ()):
            if isinstance(route, dict):
                errors += unknown_keys(route, ("selection", "destinations"), f"routes[{index}]")
        if errors:
            raise InvalidInputError(f"{source}: {'; '.join(errors)}")
        rules = _rules(data, source, base)
        return Pipeline(
            name=data.get("name"),
            id=_id(data),
            image_format=parse_image_format(data.get("image-format"), "image-format"),
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


_CLARA_KEYS = ("api-version", "name", "description", "parameters", "operators", "id")
_CLARA_OPERATOR_KEYS = (
    "name",
    "description",
    "container",
    "input",
    "output",
    "variables",
    "requests",
    "services",
    "timeout",
)
_CLARA_CONTAINER_KEYS = ("image", "tag", "command")
_CLARA_VARIABLES = (RULES_BASE64_ENV, RULES_FILE_ENV, "NVIDIA_CLARA_IMAGE_FORMAT")


def _clara_key_errors(data: dict[str, Any]) -> list[str]:
    errors = unknown_keys(data, _CLARA_KEYS)
    operators = data.get("operators")
    if not isinstance(operators, list):
        return [*errors, "operators: must be a list of operators"]
    for index, op in enumerate(operators):
        where = f"operators[{index}]"
        if not isinstance(op, dict):
            errors.append(f"{where}: must be a mapping")
            continue
        errors += unknown_keys(op, _CLARA_OPERATOR_KEYS, where)
        if isinstance(op.get("container"), dict):
            errors += unknown_keys(op["container"], _CLARA_CONTAINER_KEYS, f"{where}.container")
        variables = op.get("variables") or {}
        if not isinstance(variables, dict):
            errors.append(f"{where}.variables: must be a mapping")
            continue
        errors += [
            unknown_key(f"{where}.variables", key, _CLARA_VARIABLES)
            for key in variables
            if str(key).startswith("NVIDIA_CLARA_") and key not in _CLARA_VARIABLES
        ]
    return errors


def _clara_pipeline(data: dict[str, Any], source: str, base: Path | None) -> Pipeline:
    errors = _clara_key_errors(data)
    if errors:
        raise InvalidInputError(f"{source}: {'; '.join(errors)}")
    operators = data["operators"]
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
    rules_file: Path | None = None
    if variables.get(RULES_FILE_ENV, "").strip():
        path = Path(variables[RULES_FILE_ENV].strip())
        rules_file = path if path.is_absolute() or base is None else base / path
    rules = resolve_rules(None, variables.get(RULES_BASE64_ENV), rules_file).parse()
    return Pipeline(
        name=data.get("name"),
        id=_id(data),
        image_format=parse_image_format(
            variables.get("NVIDIA_CLARA_IMAGE_FORMAT"), "NVIDIA_CLARA_IMAGE_FORMAT"
        ),
        rules=rules,
        source=source,
    )


def _id(data: dict[str, Any]) -> str | None:
    if data.get("id") is None:
        return None
    return validate_name(str(data["id"]), "pipeline id")


PIPELINE_IDS_KEY = "pipeline-ids"
_ID_NAMESPACE = uuid.UUID("6f1c1f0e-3b7a-5d8e-9a51-2f3c5b0d7e11")


def derived_pipeline_id(name: str) -> str:
    """The id a pipeline registered without one gets: 32 hex digits, like Clara's."""
    return uuid.uuid5(_ID_NAMESPACE, name).hex


def with_pipeline_id(spec: dict[str, Any], keep: str | None = None) -> dict[str, Any]:
    """``spec`` with an ``id``: its own, else ``keep`` (the stored one), else derived."""
    if spec.get("id") is not None or not isinstance(spec.get("name"), str):
        return spec
    return {**spec, "id": keep or derived_pipeline_id(spec["name"])}


def parse_pipeline_ids(data: Any, source: str) -> dict[str, str]:
    """A ``pipeline-ids`` document: ``{<Clara pipeline-id>: <pipeline name>}``."""
    ids = data.get(PIPELINE_IDS_KEY) if isinstance(data, dict) else None
    if not isinstance(ids, dict) or set(data) != {PIPELINE_IDS_KEY}:
        raise InvalidInputError(
            f"{source}: a pipeline-ids document holds only 'pipeline-ids: {{<id>: <name>}}'"
        )
    try:
        return {
            validate_name(str(key), "pipeline id"): validate_name(str(value), "pipeline")
            for key, value in ids.items()
        }
    except SeriesflowError as exc:
        raise InvalidInputError(f"{source}: {PIPELINE_IDS_KEY}: {exc.reason}") from exc


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read pipeline {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path} is not valid YAML: {exc}") from exc


def load_pipeline_file(path: Path) -> Pipeline:
    return parse_pipeline(_read_yaml(path), str(path), path.parent)


class PipelineRegistry:
    """Pipelines found by name or by their Clara pipeline-id.

    A pipeline has at most one id: its own ``id``, or the one ``ids`` (a pipeline-ids
    document: id -> pipeline name) gives it, which then becomes its ``id``. An id naming no
    pipeline, a second id for one pipeline, or a key used twice is an error.
    """

    def __init__(self, pipelines: list[Pipeline], ids: dict[str, str] | None = None) -> None:
        self._by_key: dict[str, Pipeline] = {}
        by_name: dict[str, Pipeline] = {}
        for pipeline in pipelines:
            if pipeline.name in by_name:
                raise InvalidInputError(
                    f"pipeline {pipeline.name!r} is defined twice "
                    f"({by_name[pipeline.name].source}, {pipeline.source})"
                )
            by_name[pipeline.name] = pipeline
        for key, name in (ids or {}).items():
            mapped = by_name.get(name)
            if mapped is None:
                raise InvalidInputError(f"{PIPELINE_IDS_KEY}: {key}: no pipeline named {name!r}")
            if mapped.id is not None and mapped.id != key:
                raise InvalidInputError(
                    f"{PIPELINE_IDS_KEY}: {key}: pipeline {name!r} already has id {mapped.id}"
                )
            by_name[name] = mapped.model_copy(update={"id": key})
        for pipeline in by_name.values():
            for key in filter(None, (pipeline.name, pipeline.id)):
                self._add(key, pipeline, pipeline.source)

    def _add(self, key: str, pipeline: Pipeline, source: str) -> None:
        if key in self._by_key and self._by_key[key] is not pipeline:
            raise InvalidInputError(
                f"pipeline {key!r} is defined twice ({self._by_key[key].source}, {source})"
            )
        self._by_key[key] = pipeline

    @classmethod
    def load(cls, folder: Path | None) -> PipelineRegistry:
        """Every definition in ``folder``; a ``pipeline-ids`` document maps Clara ids."""
        if folder is None:
            return cls([])
        if not folder.is_dir():
            raise InvalidInputError(f"pipelines folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml", ".json"})
        pipelines: list[Pipeline] = []
        ids: dict[str, str] = {}
        for path in files:
            data = _read_yaml(path)
            if isinstance(data, dict) and PIPELINE_IDS_KEY in data:
                for key, name in parse_pipeline_ids(data, str(path)).items():
                    if key in ids and ids[key] != name:
                        raise InvalidInputError(f"{path}: pipeline id {key!r} is mapped twice")
                    ids[key] = name
            else:
                pipelines.append(parse_pipeline(data, str(path), path.parent))
        return cls(pipelines, ids)

    @classmethod
    def from_keys(cls, by_key: dict[str, Pipeline]) -> PipelineRegistry:
        """A registry of exactly these keys (the live view merges file and stored ones)."""
        registry = cls([])
        registry._by_key = dict(by_key)
        return registry

    def items(self) -> list[tuple[str, Pipeline]]:
        """Every key (name, id, mapped id) with its pipeline."""
        return list(self._by_key.items())

    def get(self, key: str) -> Pipeline | None:
        return self._by_key.get(key)

    def all(self) -> list[Pipeline]:
        return sorted({id(p): p for p in self._by_key.values()}.values(), key=lambda p: p.name)
