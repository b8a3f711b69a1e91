"""The console's HTML: one small function per page, every value escaped.

No patient identifiers are shown: series are named by number, modality and description,
and configuration values whose name says they are secret (private keys, passwords,
tokens) are replaced by ``(hidden)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from services.config_api.models import JobDetail, JobError
from shared.broker import QueueStats
from shared.configstore import StoredObject
from shared.jobstore import JobInfo
from shared.manifest import JobManifest

_STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#1d2733;background:#f5f7fa}
header{background:#1d3557;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#dfe8f5;text-decoration:none}header b{font-size:16px;margin-right:12px}
main{padding:16px 20px}table{border-collapse:collapse;background:#fff;margin:8px 0 18px}
th,td{border:1px solid #d7dde5;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#eaeff5}.failed{color:#b00020;font-weight:600}.completed{color:#11743b}
.running{color:#8a5a00}form.filters{display:flex;gap:10px;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:12px}
.notice{background:#e3f4e8;border:1px solid #9fd3ae;padding:8px 12px}
pre{margin:0;font-size:12px;white-space:pre-wrap}img.preview{height:120px}
.tag{background:#e8eefc;border-radius:3px;padding:1px 6px;margin-right:4px}
"""
_SECRET_WORDS = ("private", "password", "secret", "token")


@dataclass(frozen=True)
class Page:
    title: str
    body: str
    nav: bool = True

    def render(self) -> str:
        links = (
            ("jobs", "Jobs"),
            ("dead-letters", "Dead letters"),
            ("queues", "Queues"),
            ("config", "Configuration"),
            ("logout", "Sign out"),
        )
        nav = "".join(f'<a href="/console/{path}">{label}</a>' for path, label in links if self.nav)
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{escape(self.title)} - seriesflow</title><style>{_STYLE}</style></head>"
            f"<body><header><b>seriesflow</b>{nav}</header>"
            f"<main><h1>{escape(self.title)}</h1>{self.body}</main></body></html>"
        )


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], table_id: str = "") -> str:
    """A table; cells are HTML already (escape values with :func:`escape`)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _time(value: datetime) -> str:
    return escape(value.isoformat(timespec="seconds"))


def _state(state: str) -> str:
    return f'<span class="{escape(state)}">{escape(state)}</span>'


def message_page(title: str, message: str) -> Page:
    return Page(title, f"<p>{escape(message)}</p>")


def login_page(next_path: str, problem: str = "", tokens: bool = True) -> Page:
    """The sign-in form: one API token (its value is never echoed back)."""
    if not tokens:
        return Page(
            "Sign in",
            "<p>No API token is configured: the console is open on loopback, no sign-in is "
            'needed. <a href="/console/jobs">Jobs</a></p>',
            nav=False,
        )
    notice = f'<p class="failed" id="problem">{escape(problem)}</p>' if problem else ""
    return Page(
        "Sign in",
        f"{notice}<form method='post' action='/console/login' id='login'>"
        "<p><label>API token (SERIESFLOW_API_TOKEN or one of SERIESFLOW_API_TOKENS)<br>"
        "<input type='password' name='token' id='token' size='48' required "
        "autocomplete='current-password' autofocus></label></p>"
        f"<input type='hidden' name='next' value='{escape(next_path)}'>"
        "<p><button type='submit' id='sign-in'>Sign in</button></p></form>",
        nav=False,
    )


def logout_page(tokens: bool = True) -> Page:
    if not tokens:
        return message_page("Sign out", "No API token is configured: there is no sign-in.")
    return Page(
        "Sign out",
        "<form method='post' action='/console/logout' id='logout'>"
        "<p><button type='submit' id='sign-out'>Sign out</button></p></form>",
    )


def jobs_page(rows: list[tuple[JobInfo, str]], filters: dict[str, str]) -> Page:
    def field(name: str, label: str, hint: str) -> str:
        value = escape(filters.get(name, ""))
        return f'<label>{label}<input name="{name}" value="{value}" placeholder="{hint}"></label>'

    states = "".join(
        f'<option value="{s}"{" selected" if filters.get("state") == s else ""}>{s or "any"}'
        "</option>"
        for s in ("", "running", "completed", "failed")
    )
    form = (
        '<form class="filters" method="get" action="/console/jobs">'
        f'<label>state<select name="state">{states}</select></label>'
        + field("ae", "AE title", "called AE title")
        + field("pipeline", "pipeline", "name")
        + field("since", "updated since", "2h, 1d or ISO time")
        + '<button type="submit">Filter</button></form>'
    )
    table = _table(
        ("job", "AE title", "pipeline", "stage", "state", "exports", "created", "updated"),
        (
            (
                f'<a href="/console/jobs/{job.job_id}">{job.job_id}</a>',
                escape(called),
                escape(job.pipeline or "?"),
                escape("failed" if job.state == "failed" else job.stage),
                _state(job.state),
                f"{job.exports_done}/{job.export_requests}",
                _time(job.created),
                _time(job.updated),
            )
            for job, called in rows
        ),
        "jobs",
    )
    return Page("Jobs", form + f"<p>{len(rows)} job(s), newest first</p>" + table)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _timeline(detail: JobDetail, manifest: JobManifest | None) -> str:
    rows = []
    previous = manifest.created_at if manifest is not None else None
    if manifest is not None:
        rows.append(("job created", _time(manifest.created_at), "", ""))
    for event in detail.events:
        at = datetime.fromisoformat(event.createdAt or event.updated)
        took = _duration((at - previous).total_seconds()) if previous is not None else ""
        previous = at
        reason = ""
        if event.stage == "failed" and event.body:
            reason = escape(f"{event.body.get('stage')}: {event.body.get('reason')}")
        rows.append((escape(event.stage), _time(at), took, reason))
    return _table(("stage", "at", "after the previous", "failure"), rows, "timeline")


def _series_rows(
    job: str, series: list[dict[str, Any]], selections: dict[str, list[str]]
) -> Iterable[tuple[str, ...]]:
    for se in series:
        attributes = se.get("attributes", {})

        def value(tag: str, attrs: dict[str, Any] = attributes) -> str:
            values = attrs.get(tag, {}).get("Value") or [""]
            return str(values[0])

        label = escape(f"#{value('00200011')} {value('00080060')} {value('0008103E')}".strip())
        volumes = se.get("volumes", [])
        if not volumes:
            why = "; ".join(n.get("reason", "") for n in se.get("notConverted", []))
            yield (label, "", "", f"not converted: {escape(why)}")
            continue
        for volume in volumes:
            shape = escape(" x ".join(str(n) for n in volume.get("shape", [])))
            picture = ""
            if volume.get("preview"):
                src = f"/console/jobs/{job}/previews/{quote(volume['preview'])}"
                picture = f'<img class="preview" alt="preview" src="{src}">'
            chosen = selections.get(volume.get("key", ""), [])
            tags = "".join(f'<span class="tag">{escape(s)}</span>' for s in chosen)
            yield (label, shape, picture, tags or "none")


def job_page(
    detail: JobDetail,
    manifest: JobManifest | None,
    series: list[dict[str, Any]] | None,
    selections: dict[str, list[str]],
) -> Page:
    facts = _table(
        ("pipeline", "AE title", "calling AE title", "stage", "state", "instances"),
        [
            (
                escape(detail.pipeline or "?"),
                escape(manifest.called_ae_title if manifest else ""),
                escape(manifest.calling_ae_title if manifest else ""),
                escape(detail.stage),
                _state(detail.state),
                str(len(manifest.instances)) if manifest else "",
            )
        ],
    )
    errors = "".join(f"<p class='failed'>{_error(e)}</p>" for e in detail.errors)
    if series is None:
        parts = "<p>The parser has not written dicom-metadata.json yet.</p>"
    else:
        parts = _table(
            ("series", "volume", "preview", "selections"),
            _series_rows(detail.jobId, series, selections),
            "series",
        )
    body = (
        facts
        + errors
        + "<h2>Timeline</h2>"
        + _timeline(detail, manifest)
        + "<h2>Series</h2>"
        + parts
    )
    return Page(f"Job {detail.jobId}", body)


def _error(error: JobError) -> str:
    return escape(f"failed in {error.stage}: {error.reason}")


def _replay_form(service: str, dead: int) -> str:
    disabled = "" if dead else " disabled"
    return (
        f'<form method="post" action="/console/dead-letters/{service}/replay">'
        f'<button id="replay-{service}" type="submit"{disabled}>Replay</button></form>'
    )


def queues_page(stats: list[QueueStats]) -> Page:
    table = _table(
        ("queue", "messages", "consumers", "dead letters"),
        ((escape(s.queue), str(s.messages), str(s.consumers), str(s.dead_letters)) for s in stats),
        "queues",
    )
    return Page("Queues", table)


def dead_letters_page(
    stats: list[QueueStats],
    failed: list[JobInfo],
    reasons: dict[str, list[JobError]],
    notice: str | None,
) -> Page:
    shown = f'<p class="notice" id="notice">{escape(notice)}</p>' if notice else ""
    dead = _table(
        ("service queue", "dead letters", ""),
        (
            (
                escape(s.queue),
                str(s.dead_letters),
                _replay_form(s.queue.removeprefix("seriesflow."), s.dead_letters),
            )
            for s in stats
        ),
        "dead-letters",
    )
    jobs = _table(
        ("job", "pipeline", "updated", "why"),
        (
            (
                f'<a href="/console/jobs/{j.job_id}">{j.job_id}</a>',
                escape(j.pipeline or "?"),
                _time(j.updated),
                "<br>".join(_error(e) for e in reasons.get(j.job_id, [])),
            )
            for j in failed
        ),
        "failed-jobs",
    )
    return Page(
        "Dead letters",
        shown + "<p>Replay re-publishes a service's dead letters to their original routing keys "
        "(as <code>seriesflow replay --dead-letters SERVICE</code>).</p>"
        + dead
        + "<h2>Failed jobs</h2>"
        + jobs,
    )


def _shown_spec(spec: Any) -> Any:
    if isinstance(spec, dict):
        return {
            k: "(hidden)"
            if any(w in str(k).lower() for w in _SECRET_WORDS) and v is not None
            else _shown_spec(v)
            for k, v in spec.items()
        }
    if isinstance(spec, list):
        return [_shown_spec(v) for v in spec]
    return spec


def config_page(objects: dict[str, list[StoredObject]]) -> Page:
    body = "<p>Read-only; change it with <code>seriesflow config</code> or the API.</p>"
    for kind, items in objects.items():
        body += f"<h2>{escape(kind)}</h2>" + _table(
            ("name", "origin", "updated", "definition"),
            (
                (
                    escape(o.name),
                    escape(o.origin + (" (overrides file)" if o.overrides_file else "")),
                    escape(o.updated_at),
                    f"<pre>{escape(json.dumps(_shown_spec(o.spec), indent=1))}</pre>",
                )
                for o in items
            ),
            f"config-{kind}",
        )
    return Page("Configuration", body)
