"""``seriesflow config``: AE titles, sources, destinations and pipelines of a running
seriesflow, through its config API (docs/config-api.md).

The API is at ``SERIESFLOW_API_URL`` (default ``http://127.0.0.1:5000``) and the bearer
token is ``SERIESFLOW_API_TOKEN`` (none: the API must serve loopback without tokens). The
API validates every change; its message is printed as one line on stderr.

Exit status: 0 done; 1 the API refused the request (invalid, exists already, unknown
name, changed since read, in use) or the destination did not answer the C-ECHO; 2 usage
error (bad arguments, an unreadable file, a bad SERIESFLOW_API_URL); 3 the token was
refused (401); 4 the API could not be reached, or answered a server error (5xx).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import quote

import typer
import yaml
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # httpx is imported when a config command runs, not by every command
    import httpx

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 3
EXIT_UNREACHABLE = 4
DEFAULT_URL = "http://127.0.0.1:5000"
TIMEOUT_SECONDS = 30.0

KINDS = {
    "ae-titles": "ae-titles",
    "ae-title": "ae-titles",
    "sources": "sources",
    "source": "sources",
    "destinations": "destinations",
    "destination": "destinations",
    "pipelines": "pipelines",
    "pipeline": "pipelines",
}
# Answer fields the API computes; they are not sent back on a change.
_READ_ONLY = ("revision", "createdAt", "updatedAt", "updatedBy", "origin", "overridesFile")
_COLUMNS = {
    "ae-titles": ("name", "aeTitle", "pipeline", "timeout", "grouping"),
    "sources": ("name", "aeTitle", "hostIp"),
    "destinations": ("name", "aeTitle", "hostIp", "port"),
    "pipelines": ("name",),
}

config_app = typer.Typer(
    help="List, add, change and remove AE titles, sources, destinations and pipelines "
    "through the running config API (SERIESFLOW_API_URL, SERIESFLOW_API_TOKEN).",
    no_args_is_help=True,
)
err = Console(stderr=True)
out = Console()

KindArgument = Annotated[
    str, typer.Argument(help="ae-titles, sources, destinations or pipelines (or singular).")
]
NameArgument = Annotated[str, typer.Argument(help="The object's name.")]
FieldsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="FIELD=VALUE pairs with the API's field names (aeTitle=CT_AI port=104 "
        "hostIp=10.0.0.5); a value is read as YAML (numbers, true, [a, b])."
    ),
]
FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="A JSON or YAML document with the fields (a pipeline: its pipeline document; "
        "a rules-file in it is read here and sent inline).",
    ),
]
OverrideOption = Annotated[
    bool,
    typer.Option(
        "--override-file",
        help="Replace the configuration file's entry of the same name (audited).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _kind(kind: str) -> str:
    try:
        return KINDS[kind.strip().lower()]
    except KeyError:
        _fail(f"unknown kind {kind!r}: use ae-titles, sources, destinations or pipelines", 2)


def _client() -> httpx.Client:
    import httpx

    url = os.environ.get("SERIESFLOW_API_URL", "").strip() or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        _fail(f"SERIESFLOW_API_URL must start with http:// or https:// (got {url!r})", 2)
    token = os.environ.get("SERIESFLOW_API_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT_SECONDS)


def _message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip()[:300] or answer.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return json.dumps(body)[:300]


def _call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The API's answer to a request; any error ends the command with its exit status."""
    import httpx

    with _client() as client:
        try:
            answer = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the config API at {client.base_url}: {exc}", EXIT_UNREACHABLE)
    if answer.is_success:
        return answer
    message = f"{answer.status_code}: {_message(answer)}"
    if answer.status_code == 401:
        _fail(f"{message} (set SERIESFLOW_API_TOKEN)", EXIT_UNAUTHORIZED)
    if answer.status_code >= 500:
        _fail(message, EXIT_UNREACHABLE)
    _fail(message, EXIT_REFUSED)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        _fail(f"cannot read {path}: {exc}", EXIT_USAGE)
    if not isinstance(data, dict):
        _fail(f"{path}: expected a mapping of fields", EXIT_USAGE)
    if "rules-file" in data:  # the API cannot read our files: send the rules inline
        rules_path = Path(str(data.pop("rules-file")))
        if not rules_path.is_absolute():
            rules_path = path.parent / rules_path
        if "rules" in data:
            _fail(f"{path}: give rules or rules-file, not both", EXIT_USAGE)
        try:
            data["rules"] = yaml.safe_load(rules_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            _fail(f"cannot read the rules file {rules_path}: {exc}", EXIT_USAGE)
    return data


def parse_fields(pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as a mapping; each value is read as YAML."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip():
            _fail(f"expected FIELD=VALUE, got {pair!r}", EXIT_USAGE)
        try:
            fields[field.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            fields[field.strip()] = value
    return fields


def _body(fields: list[str] | None, file: Path | None) -> dict[str, Any]:
    body = _read_document(file) if file is not None else {}
    body.update(parse_fields(fields or []))
    return body


def _show(kind: str, item: dict[str, Any], as_json: bool) -> None:
    if as_json or kind == "pipelines":
        out.print_json(json.dumps(item))
        return
    table = Table(show_header=False)
    for field, value in item.items():
        table.add_row(field, "" if value is None else str(value))
    out.print(table)


@config_app.command("list")
def list_objects(kind: KindArgument, as_json: JsonOption = False) -> None:
    """Every object of a kind (the configuration file's too, origin 'file')."""
    kind = _kind(kind)
    items: list[dict[str, Any]] = _call("GET", f"/api/v1/{kind}").json()
    if as_json:
        out.print_json(json.dumps(items))
        return
    table = Table(title=f"{kind}: {len(items)}")
    columns = (*_COLUMNS[kind], "origin", "updatedAt")
    for column in columns:
        table.add_column(column)
    for item in items:
        table.add_row(*("" if item.get(c) is None else str(item.get(c)) for c in columns))
    out.print(table)


@config_app.command("show")
def show(kind: KindArgument, name: NameArgument, as_json: JsonOption = False) -> None:
    """One object, with its revision."""
    kind = _kind(kind)
    _show(kind, _call("GET", f"/api/v1/{kind}/{quote(name, safe='')}").json(), as_json)


@config_app.command("add")
def add(
    kind: KindArgument,
    fields: FieldsArgument = None,
    file: FileOption = None,
    override_file: OverrideOption = False,
    as_json: JsonOption = False,
) -> None:
    """Create an object, e.g. ``add destination name=pacs aeTitle=PACS hostIp=10.0.0.5
    port=104`` or ``add pipeline -f brain.yaml``."""
    kind = _kind(kind)
    body = _body(fields, file)
    if not body:
        _fail("give FIELD=VALUE pairs or --file", EXIT_USAGE)
    params = {"overrideFile": "true"} if override_file else None
    created = _call("POST", f"/api/v1/{kind}", json=body, params=params).json()
    out.print(f"added {kind[:-1]} {created.get('name')}", highlight=False)
    if as_json:
        _show(kind, created, True)


@config_app.command("change")
def change(
    kind: KindArgument,
    name: NameArgument,
    fields: FieldsArgument = None,
    file: FileOption = None,
    override_file: OverrideOption = False,
    as_json: JsonOption = False,
) -> None:
    """Change fields of an object, e.g. ``change destination pacs port=11112``. The
    object is read first and written back only if nobody changed it meanwhile. For a
    pipeline, the fields are keys of its document (``image-format=nii``)."""
    kind = _kind(kind)
    changes = _body(fields, file)
    if not changes:
        _fail("give FIELD=VALUE pairs or --file", EXIT_USAGE)
    current = _call("GET", f"/api/v1/{kind}/{quote(name, safe='')}").json()
    revision = str(current["revision"])
    if kind == "pipelines":
        body = changes if file is not None else {**current["definition"], **changes}
    else:
        body = {k: v for k, v in current.items() if k not in _READ_ONLY}
        body.update(changes)
    params = {"overrideFile": "true"} if override_file else None
    headers = {"If-Match": f'"{revision}"'}
    changed = _call(
        "PUT", f"/api/v1/{kind}/{quote(name, safe='')}", json=body, headers=headers, params=params
    )
    out.print(f"changed {kind[:-1]} {name}", highlight=False)
    if as_json:
        _show(kind, changed.json(), True)


@config_app.command("remove")
def remove(kind: KindArgument, name: NameArgument) -> None:
    """Delete an object (refused while an AE title uses the pipeline, or a pipeline routes
    to the destination)."""
    kind = _kind(kind)
    _call("DELETE", f"/api/v1/{kind}/{quote(name, safe='')}")
    out.print(f"removed {kind[:-1]} {name}", highlight=False)


@config_app.command("echo")
def echo(destination: Annotated[str, typer.Argument(help="A destination's name.")]) -> None:
    """Send a C-ECHO to a destination from the API's host; exit status 1 if it fails."""
    answer = _call("POST", f"/api/v1/destinations/{quote(destination, safe='')}/echo").json()
    where = f"{answer.get('aeTitle')}@{answer.get('hostIp')}:{answer.get('port')}"
    if answer.get("success"):
        out.print(f"C-ECHO {destination} ({where}): success {answer.get('status')}")
        return
    _fail(f"C-ECHO {destination} ({where}) failed: {answer.get('message')}", EXIT_REFUSED)
