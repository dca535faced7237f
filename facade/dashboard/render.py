"""The dashboard's HTML: whole pages and the sections the page script swaps in as events arrive.

Plain functions from data (``service`` shapes) to HTML strings; every value from the
backend goes through ``esc``. Each live part of a page is a ``<section id="part-...">``
whose content the script replaces with a fresh rendering of the same function
(``/…/parts`` endpoints return them as JSON by id), so the first page load and every
update share one renderer. Forms work without the script too (POST, then a redirect).
"""

from __future__ import annotations

import html
import itertools
import json
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Page", "esc"]

STATUSES = ("active", "pending", "running", "interrupted", "completed", "failed", "cancelled")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))}">{stamp}</time>'


def _json(value: Any) -> str:
    return esc(json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def _seconds(value: Any) -> str:
    return f"{value:.3f} s" if isinstance(value, (int, float)) else "-"


def _badge(status: Any) -> str:
    return f'<span class="badge status-{esc(status)}">{esc(status)}</span>'


def _where(row: Mapping[str, Any]) -> str:
    """The Worker cell: the worker's id once known, else where the task went (never the bare word)."""
    if row.get("worker"):
        return str(row["worker"])
    if row.get("where") == "worker":
        return "a worker (id shown when it finishes)" if row.get("outcome") == "running" else "a worker"
    if row.get("where") == "local":
        return "this process"
    return str(row.get("where") or "-")


_FORM_IDS = itertools.count(1)  # ids of the token fields in action forms (unique within a page)


@dataclass(frozen=True)
class Page:
    """How the pages of one dashboard render: its base path and whether actions show."""

    read_only: bool = False
    token_required: bool = False
    title: str = "distributed-agents"

    # -- frame ----------------------------------------------------------------------------

    def layout(self, title: str, body: str, *, current: str, notice: str = "", data: Mapping[str, str] | None = None
               ) -> str:
        nav = "".join(
            f'<li><a href="{href}"{" aria-current=page" if key == current else ""}>{label}</a></li>'
            for key, href, label in (("workflows", "/", "Workflows"), ("workers", "/workers", "Workers"),
                                     ("queues", "/queues", "Queues"), ("dead-letters", "/dead-letters",
                                                                       "Dead letters")))
        attributes = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (data or {}).items())
        mode = ('<p class="mode">Read-only: actions are disabled.</p>' if self.read_only else "")
        token = ""
        if self.token_required and not self.read_only:
            token = ('<form class="token" id="token-form" onsubmit="return false">'
                     '<label for="dashboard-token">Dashboard token</label> '
                     '<input id="dashboard-token" name="token" type="password" autocomplete="current-password" '
                     'aria-describedby="token-help"> <span id="token-help" class="help">needed for actions; '
                     'kept in this tab only</span></form>')
        notice_html = f'<p class="notice" role="status">{esc(notice)}</p>' if notice else ""
        return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · {esc(self.title)}</title>
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body{attributes} data-read-only="{str(self.read_only).lower()}" data-token-required="{str(self.token_required).lower()}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<p class="brand">{esc(self.title)}</p>
<nav aria-label="Main"><ul>{nav}</ul></nav>
<p class="live" id="live-state" role="status" aria-live="polite">connecting…</p>
</header>
{token}
<main id="main" tabindex="-1">
<h1>{esc(title)}</h1>
{mode}
<div id="messages" role="status" aria-live="polite">{notice_html}</div>
{body}
</main>
<footer><p>Live updates arrive by Server-Sent Events; nothing is polled.</p></footer>
</body>
</html>
"""

    def _action(self, url: str, label: str, *, fields: Mapping[str, Any] | None = None, extra: str = "",
                danger: bool = False, confirm: str = "") -> str:
        """A one-button POST form (nothing when read-only)."""
        if self.read_only:
            return ""
        hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in (fields or {}).items())
        attrs = f' data-confirm="{esc(confirm)}"' if confirm else ""
        if self.token_required:  # without the page script, the token travels in the form itself
            field = f"form-token-{next(_FORM_IDS)}"
            extra += (f'<span class="form-token"><label for="{field}">Token for this action</label>'
                      f'<input type="password" id="{field}" name="token" autocomplete="current-password"></span>')
        return (f'<form class="action" method="post" action="{esc(url)}"{attrs}>{hidden}{extra}'
                f'<button type="submit"{" class=danger" if danger else ""}>{esc(label)}</button></form>')

    def rows_section(self, heading: str, content: str) -> str:
        """The ``part-rows`` section of a list page (what its live updates replace), with a link
        that skips its table for keyboard and screen-reader users."""
        skip = '<a class="skip-table" href="#after-rows">Skip table</a>' if "<table" in content else ""
        return self._section("rows", heading, skip + content + '<span id="after-rows" tabindex="-1"></span>')

    @staticmethod
    def _section(part: str, heading: str, content: str) -> str:
        return (f'<section id="part-{part}" class="part" aria-labelledby="h-{part}">'
                f'<h2 id="h-{part}">{esc(heading)}</h2>{content}</section>')

    # -- workflows ------------------------------------------------------------------------

    def workflows_page(self, data: Mapping[str, Any], query: Mapping[str, str], graphs: Sequence[str],
                       notice: str = "") -> str:
        status = query.get("status", "")
        options = "".join(f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in STATUSES)
        names = "".join(f'<option value="{esc(g)}">' for g in graphs)
        form = f"""<form class="filters" method="get" action="/" role="search" aria-label="Filter workflows">
<label for="status">Status</label>
<select id="status" name="status"><option value="">all</option>{options}</select>
<label for="graph">Graph</label>
<input id="graph" name="graph" value="{esc(query.get('graph', ''))}" list="graph-names" autocomplete="off">
<datalist id="graph-names">{names}</datalist>
<label for="order">Order</label>
<select id="order" name="order"><option value="newest">newest first</option>
<option value="oldest"{" selected" if query.get("order") == "oldest" else ""}>oldest first</option></select>
<button type="submit">Filter</button>
</form>"""
        body = form + self.rows_section("Workflows", self.workflow_rows(data, query))
        return self.layout("Workflows", body, current="workflows", notice=notice,
                           data={"live": "list", "parts": "/parts/workflows?" + urllib.parse.urlencode(query)})

    def workflow_rows(self, data: Mapping[str, Any], query: Mapping[str, str]) -> str:
        rows = "".join(
            f'<tr data-workflow="{esc(w["workflow_id"])}"><td><a href="/workflows/{esc(urllib.parse.quote(w["workflow_id"]))}">'
            f'{esc(w["workflow_id"])}</a></td><td>{esc(w["graph"])}</td><td>{_badge(w["status"])}</td>'
            f'<td class="num">{esc(w["step"])}</td><td>{esc(", ".join(w["next_nodes"]) or "-")}</td>'
            f'<td>{_when(w["created_at"])}</td><td>{_when(w["updated_at"])}</td></tr>'
            for w in data["workflows"])
        if not rows:
            rows = '<tr><td colspan="7">No workflows match.</td></tr>'
        base = {k: v for k, v in query.items() if k not in ("cursor", "offset")}

        def link(label: str, rel: str = "", **changes: Any) -> str:
            target = urllib.parse.urlencode({**base, **{k: v for k, v in changes.items() if v not in ("", 0)}})
            return f'<a{f" rel={rel}" if rel else ""} href="/?{esc(target)}">{esc(label)}</a> '

        pager = ""
        total, offset, shown = data.get("total"), data.get("offset") or 0, len(data["workflows"])
        if total is None:  # oldest first by cursor: the last page is the newest-first order's first
            if query.get("cursor"):
                pager += link("First page")
            if data.get("next_cursor"):
                pager += link("Next page", "next", cursor=data["next_cursor"])
                pager += link("Last page (newest)", order="newest")
            caption = f"Oldest first; {shown} shown"
        else:
            size = int(query.get("limit") or 0) or max(shown, 1)
            if offset > 0:
                pager += link("First page") + link("Previous page", "prev", offset=max(0, offset - size))
            if offset + shown < total:
                pager += link("Next page", "next", offset=offset + size)
                pager += link("Last page", offset=((total - 1) // size) * size)
            first_shown = offset + 1 if shown else 0
            caption = (f"{'Oldest' if data.get('order') == 'oldest' else 'Newest'} first; "
                       f"{first_shown}–{offset + shown} of {total}")
        return (f'<table class="list"><caption>{esc(caption)}</caption>'
                '<thead><tr><th scope="col">Workflow</th><th scope="col">Graph</th><th scope="col">Status</th>'
                '<th scope="col">Step</th><th scope="col">Next nodes</th><th scope="col">Created (UTC)</th>'
                f'<th scope="col">Updated (UTC)</th></tr></thead><tbody>{rows}</tbody></table>'
                f'<nav class="pager" aria-label="Pages">{pager}</nav>')

    # -- one workflow ---------------------------------------------------------------------

    def workflow_page(self, data: Mapping[str, Any], parts: Mapping[str, str], notice: str = "") -> str:
        workflow_id = data["workflow_id"]
        order = ("summary", "actions", "interrupts", "error", "graph", "timeline", "state", "history", "events")
        body = "".join(parts[p] for p in order if p in parts)
        quoted = urllib.parse.quote(workflow_id)
        return self.layout(f"Workflow {workflow_id}", body, current="workflows", notice=notice,
                           data={"live": "workflow", "workflow": workflow_id, "parts": f"/workflows/{quoted}/parts"})

    def workflow_parts(self, data: Mapping[str, Any], svg: str | None, graph_problem: str, state: Mapping[str, Any] | None
                       ) -> dict[str, str]:
        """Every live section of a workflow's page, by part name."""
        return {
            "summary": self._section("summary", "Summary", self._summary(data)),
            "actions": self._section("actions", "Actions", self._actions(data)),
            "interrupts": self._section("interrupts", "Pending interrupts", self._interrupts(data)),
            "error": self._section("error", "Error", self._error(data)),
            "graph": self._section("graph", "Graph", self._graph(data, svg, graph_problem)),
            "timeline": self._section("timeline", "Step timeline", self._timeline(data)),
            "state": self._section("state", "State", self._state(data, state)),
            "history": self._section("history", "Checkpoints", self._history(data)),
            "events": self._events_section(),
        }

    def _summary(self, data: Mapping[str, Any]) -> str:
        rows = [("Status", _badge(data["status"])), ("Graph", esc(data["graph"])), ("Step", esc(data["step"])),
                ("Next nodes", esc(", ".join(data["next_nodes"]) or "-"))]
        if data.get("waiting_for"):
            rows.append(("Waiting for", esc(data["waiting_for"])))
        if data.get("driving"):
            rows.append(("Driven by", "this dashboard (resumed here)"))
        rows += [("Created (UTC)", _when(data["created_at"])), ("Updated (UTC)", _when(data["updated_at"]))]
        return '<dl class="summary">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"

    def _actions(self, data: Mapping[str, Any]) -> str:
        if self.read_only:
            return "<p>Read-only dashboard: no actions.</p>"
        quoted = urllib.parse.quote(data["workflow_id"])
        buttons = []
        status = data["status"]
        if status not in ("completed", "failed", "cancelled"):
            buttons.append(self._action(f"/workflows/{quoted}/cancel", "Cancel workflow", danger=True,
                                        confirm=f"Cancel workflow {data['workflow_id']}?"))
        if status in ("pending", "running", "failed", "cancelled") or (
                status == "interrupted" and not any(i["kind"] == "interrupt" for i in data["interrupts"])):
            buttons.append(self._action(f"/workflows/{quoted}/resume", "Resume workflow"))
        if not data.get("graph_known"):
            buttons.append(f'<p class="help">Resume and fork need the graph {esc(data["graph"])!s}: start the dashboard '
                           "with --graph MODULE:GRAPH.</p>")
        buttons.append('<p class="help">Fork from a step: use the buttons in the Checkpoints table.</p>')
        return "".join(buttons)

    def _interrupts(self, data: Mapping[str, Any]) -> str:
        pending = data["interrupts"]
        if not pending:
            return "<p>None.</p>"
        quoted = urllib.parse.quote(data["workflow_id"])
        items = []
        for i, pause in enumerate(pending):
            value = f"<pre>{_json(pause['value'])}</pre>" if pause["value"] is not None else ""
            form = ""
            if pause["kind"] == "interrupt" and not self.read_only:
                field = f"answer-{i}"
                form = self._action(
                    f"/workflows/{quoted}/resume", "Send answer and resume",
                    fields={"interrupt_id": pause["id"]} if len(pending) > 1 else {},
                    extra=(f'<label for="{field}">Answer (JSON, or plain text)</label>'
                           f'<textarea id="{field}" name="answer" rows="3" required></textarea>'
                           f'<label class="inline"><input type="checkbox" name="as_text" value="1"> '
                           'Send as plain text (else it must be JSON: "yes", 42, {"ok": true})</label>'))
            items.append(f'<li class="interrupt"><p>Node <strong>{esc(pause["node"])}</strong> ({esc(pause["kind"])}), '
                         f'id <code>{esc(pause["id"])}</code></p>{value}{form}</li>')
        return f'<ul class="interrupts">{"".join(items)}</ul>'

    def _error(self, data: Mapping[str, Any]) -> str:
        error = data.get("error")
        if not error:
            return "<p>None.</p>"
        trace = error.get("traceback")
        details = {k: v for k, v in error.items() if k not in ("traceback", "summary")}
        return (f'<p class="error-summary">{esc(error.get("summary") or error.get("message") or error)}</p>'
                + (f'<details open><summary>Traceback</summary><pre class="traceback">{esc(trace)}</pre></details>'
                   if trace else "")
                + f"<details><summary>Details</summary><pre>{_json(details)}</pre></details>")

    def _graph(self, data: Mapping[str, Any], svg: str | None, problem: str) -> str:
        legend = ('<ul class="legend" aria-label="Legend"><li class="state-current">running / next</li>'
                  '<li class="state-finished">finished</li><li class="state-failed">failed</li>'
                  '<li class="state-interrupted">waiting for an answer</li></ul>')
        states = data.get("node_states", {})
        text = "; ".join(f"{k}: {v}" for k, v in sorted(states.items())) or "nothing has run yet"
        title = f'<p id="graph-title" class="sr-only">Graph {esc(data["graph"])}: {esc(text)}</p>'
        if svg is None:
            return f'<p>{esc(problem)}</p><p>Node states: {esc(text)}</p>'
        return f'{title}{legend}<div class="graph">{svg}</div>'

    def _timeline(self, data: Mapping[str, Any]) -> str:
        rows = "".join(
            f'<tr class="outcome-{esc(r["outcome"])}"><td class="num">{esc(r["step"])}</td><td>{esc(r["node"])}</td>'
            f'<td>{esc(_where(r))}</td><td class="num">{_seconds(r["duration"])}</td>'
            f'<td class="num">{esc(r["attempts"] if r["attempts"] is not None else "-")}</td>'
            f'<td>{esc(r["outcome"])}{(": " + esc(r["error"])) if r["error"] else ""}</td>'
            f'<td><a href="?step={esc(int(r["step"]) + 1)}#part-state" data-step="{esc(int(r["step"]) + 1)}">'
            f'state after</a></td></tr>'
            for r in data["timeline"])
        if not rows:
            return "<p>No node has run yet.</p>"
        return ('<table class="list"><caption>Node tasks by step; worker, duration and attempts are known for '
                'tasks this dashboard saw run</caption><thead><tr><th scope="col">Step</th><th scope="col">Node</th>'
                '<th scope="col">Worker</th><th scope="col">Duration</th><th scope="col">Attempts</th>'
                f'<th scope="col">Outcome</th><th scope="col">State</th></tr></thead><tbody>{rows}</tbody></table>')

    def _state(self, data: Mapping[str, Any], state: Mapping[str, Any] | None) -> str:
        steps = sorted({int(c["step"]) for c in data["history"]})
        chosen = state["step"] if state else None
        options = "".join(f'<option value="{s}"{" selected" if s == chosen else ""}>step {s}</option>' for s in steps)
        picker = (f'<form class="step-picker" method="get" action="#part-state"><label for="step">Show the state at'
                  f'</label> <select id="step" name="step">{options}</select> <button type="submit">Show</button>'
                  "</form>")
        if state is None:
            missing = "No checkpoint of that step: it has not committed." if steps else "No checkpoint yet."
            return picker + f"<p>{missing}</p>"
        since = (f"step {state['previous_step']}" if state["previous_step"] is not None else "the start")
        diff_rows = "".join(
            f'<tr class="change-{esc(d["change"])}"><th scope="row">{esc(d["key"])}</th><td>{esc(d["change"])}</td>'
            f'<td><pre>{_json(d["before"]) if d["change"] != "added" else ""}</pre></td>'
            f'<td><pre>{_json(d["after"]) if d["change"] != "removed" else ""}</pre></td></tr>'
            for d in state["diff"])
        diff = (f'<table class="diff"><caption>Changes since {esc(since)}</caption><thead><tr><th scope="col">Key'
                '</th><th scope="col">Change</th><th scope="col">Before</th><th scope="col">After</th></tr></thead>'
                f'<tbody>{diff_rows}</tbody></table>' if diff_rows else f"<p>No change since {esc(since)}.</p>")
        writes = ", ".join(state.get("writes", ())) or "none"
        return (picker + f'<p>Checkpoint <code>{esc(state["checkpoint_id"])}</code>; next: '
                f'{esc(", ".join(state["next"]) or "-")}; written by: {esc(writes)}</p>' + diff
                + f'<details><summary>All values at step {esc(state["step"])}</summary>'
                  f'<pre class="values">{_json(state["values"])}</pre></details>')

    def _history(self, data: Mapping[str, Any]) -> str:
        rows = []
        for c in data["history"]:
            fork = self._action("/fork", f"Fork from step {c['step']}", fields={"checkpoint_id": c["checkpoint_id"]}) \
                if data.get("graph_known") else ""
            rows.append(f'<tr><td class="num">{esc(c["step"])}</td><td><code>{esc(c["checkpoint_id"])}</code></td>'
                        f'<td>{esc(c["source"] or "-")}</td><td>{esc(", ".join(c["writes"]) or "-")}</td>'
                        f'<td>{esc(", ".join(c["next"]) or "-")}</td><td>{_when(c["created_at"])}</td>'
                        f'<td><a href="?step={esc(c["step"])}#part-state" data-step="{esc(c["step"])}">state</a>'
                        f"{fork}</td></tr>")
        if not rows:
            return "<p>No checkpoint yet.</p>"
        return ('<table class="list"><caption>Newest first</caption><thead><tr><th scope="col">Step</th>'
                '<th scope="col">Checkpoint</th><th scope="col">Source</th><th scope="col">Written by</th>'
                '<th scope="col">Next</th><th scope="col">Committed (UTC)</th><th scope="col">Actions</th></tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table>')

    @staticmethod
    def _events_section() -> str:
        return ('<section id="events" class="part" aria-labelledby="h-events"><h2 id="h-events">Live events</h2>'
                '<ol id="event-log" class="events" aria-live="off"></ol></section>')

    # -- workers, queues, dead letters ----------------------------------------------------

    def workers_page(self, workers: Sequence[Mapping[str, Any]]) -> str:
        return self.layout("Workers", self.rows_section("Live workers", self.worker_rows(workers)),
                           current="workers", data={"live": "list", "parts": "/parts/workers"})

    @staticmethod
    def worker_rows(workers: Sequence[Mapping[str, Any]]) -> str:
        if not workers:
            return "<p>No live worker.</p>"
        rows = "".join(
            f'<tr><td>{esc(w["worker_id"])}</td><td>{esc(", ".join(w["node_types"]))}</td>'
            f'<td class="num">{esc(w["capacity"])}</td><td class="num">{esc(w["in_flight"] if w["in_flight"] is not None else "-")}</td>'
            f'<td class="num" data-age="{esc(w["heartbeat_age"])}">{esc(w["heartbeat_age"])} s</td>'
            f'<td><span class="badge status-{esc(w.get("status", "online"))}">{esc(w.get("status", "online"))}</span></td>'
            f'<td>{esc(w["host"])}</td><td class="num">{esc(w["pid"])}</td></tr>'
            for w in workers)
        return ('<table class="list"><caption>Workers with a heartbeat within the backend\'s heartbeat TTL '
                '(late: a heartbeat was missed; offline: none for the whole TTL, dropped soon); the server '
                'reads the registry every few seconds and pushes changes</caption><thead><tr><th scope="col">Worker</th>'
                '<th scope="col">Node types</th><th scope="col">Capacity</th><th scope="col">In flight</th>'
                '<th scope="col">Heartbeat age</th><th scope="col">Status</th><th scope="col">Host</th>'
                '<th scope="col">PID</th></tr></thead>'
                f"<tbody>{rows}</tbody></table>")

    def queues_page(self, queues: Sequence[Mapping[str, Any]]) -> str:
        return self.layout("Queues", self.rows_section("Queue depth per node type", self.queue_rows(queues)),
                           current="queues", data={"live": "list", "parts": "/parts/queues"})

    @staticmethod
    def queue_rows(queues: Sequence[Mapping[str, Any]]) -> str:
        if not queues:
            return "<p>No node type known yet (no live worker, no dead letter, no active workflow of a known graph).</p>"
        rows = []
        for q in queues:
            dead = esc(q["dead"])
            if q["dead"]:
                link = "/dead-letters?" + urllib.parse.urlencode({"node_type": q["node_type"]})
                dead = f'<a href="{esc(link)}">{dead}</a>'
            rows.append(f'<tr><th scope="row">{esc(q["node_type"])}</th><td class="num">{esc(q["queued"])}</td>'
                        f'<td class="num">{esc(q["in_flight"])}</td><td class="num">{dead}</td></tr>')
        rows_html = "".join(rows)
        return ('<table class="list"><thead><tr><th scope="col">Node type</th><th scope="col">Queued</th>'
                f'<th scope="col">In flight</th><th scope="col">Dead</th></tr></thead><tbody>{rows_html}</tbody></table>')

    def dead_letters_page(self, data: Mapping[str, Any], node_type: str, notice: str = "") -> str:
        """``data``: ``DashboardService.dead_letter_page``."""
        form = (f'<form class="filters" method="get" action="/dead-letters" role="search" aria-label="Filter dead '
                f'letters"><label for="node_type">Node type</label><input id="node_type" name="node_type" '
                f'value="{esc(node_type)}"><button type="submit">Filter</button></form>')
        query = urllib.parse.urlencode({k: v for k, v in (("node_type", node_type), ("offset", data["offset"])) if v})
        return self.layout("Dead letters", form + self.rows_section("Dead letters",
                                                               self.letters_content(data, node_type)),
                           current="dead-letters", notice=notice,
                           data={"live": "list", "parts": "/parts/dead-letters?" + query})

    def letters_content(self, data: Mapping[str, Any], node_type: str) -> str:
        """The count, the page of dead letters, a pager, and a purge of exactly the listed ones."""
        letters, total, offset, limit = data["letters"], data["total"], data["offset"], data["limit"]
        if not letters:
            return self.letter_rows(letters)
        kind = f" of node type {node_type}" if node_type else ""
        count = f'<p class="count">Showing {offset + 1}–{offset + len(letters)} of {total} dead letter(s){esc(kind)}.</p>'

        def link(label: str, to: int) -> str:
            query = urllib.parse.urlencode({k: v for k, v in (("node_type", node_type), ("offset", to)) if v != ""})
            return f'<a href="/dead-letters?{esc(query)}">{esc(label)}</a>'

        last = ((total - 1) // limit) * limit
        pager = [link("First page", 0)] if offset > 0 else []
        if offset > 0:
            pager.append(link("Previous page", max(0, offset - limit)))
        if offset + len(letters) < total:
            pager += [link("Next page", offset + limit), link("Last page", last)]
        nav = f'<nav class="pager" aria-label="Dead letter pages">{" ".join(pager)}</nav>' if pager else ""
        ids = "\n".join(str(letter["task_id"]) for letter in letters)
        purge = self._action("/dead-letters/purge", f"Purge the {len(letters)} listed", fields={"task_ids": ids},
                             danger=True, confirm=f"Delete the {len(letters)} listed dead letters for good?")
        return count + self.letter_rows(letters) + nav + purge

    def letter_rows(self, letters: Sequence[Mapping[str, Any]]) -> str:
        if not letters:
            return "<p>No dead letters.</p>"
        rows = []
        for letter in letters:
            quoted = urllib.parse.quote(letter["task_id"], safe="")
            workflow = letter["workflow_id"]
            link = (f'<a href="/workflows/{esc(urllib.parse.quote(workflow))}">{esc(workflow)}</a>' if workflow else "-")
            rows.append(
                f'<tr data-task="{esc(letter["task_id"])}"><td><a href="/dead-letters/{esc(quoted)}">'
                f'{esc(letter["task_id"])}</a></td><td>{esc(letter["node_type"])}</td><td>{link}</td>'
                f'<td class="num">{esc(letter["attempts"])}</td><td>{esc(letter["reason"])}</td>'
                f'<td>{_when(letter.get("dead_at"))}</td><td class="row-actions">'
                f'{self._action(f"/dead-letters/{quoted}/requeue", "Requeue")}'
                f'{self._action(f"/dead-letters/{quoted}/purge", "Purge", danger=True, confirm="Delete this dead letter for good?")}'
                "</td></tr>")
        return ('<table class="list"><caption>Oldest first</caption><thead><tr><th scope="col">Task</th>'
                '<th scope="col">Node type</th><th scope="col">Workflow</th><th scope="col">Attempts</th>'
                '<th scope="col">Reason</th><th scope="col">Dead since (UTC)</th><th scope="col">Actions</th></tr>'
                f'</thead><tbody>{"".join(rows)}</tbody></table>')

    def dead_letter_page(self, letter: Mapping[str, Any], notice: str = "") -> str:
        quoted = urllib.parse.quote(letter["task_id"], safe="")
        workflow = letter["workflow_id"]
        facts = [("Task", f"<code>{esc(letter['task_id'])}</code>"), ("Node type", esc(letter["node_type"])),
                 ("Node", esc(letter["node"] or "-")),
                 ("Workflow", f'<a href="/workflows/{esc(urllib.parse.quote(workflow))}">{esc(workflow)}</a>'
                  if workflow else "-"),
                 ("Attempts", esc(letter["attempts"])), ("Dead since (UTC)", _when(letter["dead_at"]))]
        errors = "".join(f"<li><pre class=\"traceback\">{esc(e)}</pre></li>" for e in letter["errors"])
        body = ('<dl class="summary">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
                + f'<section aria-labelledby="h-reason"><h2 id="h-reason">Reason</h2><pre class="traceback">'
                  f'{esc(letter["reason"])}</pre></section>'
                + f'<section aria-labelledby="h-errors"><h2 id="h-errors">Error history (oldest first)</h2>'
                  f'<ol class="errors">{errors}</ol></section>'
                + (f'<section aria-labelledby="h-task"><h2 id="h-task">Task</h2><pre>{_json(letter["task"])}</pre>'
                   "</section>" if letter["task"] else "")
                + ('<section aria-labelledby="h-actions"><h2 id="h-actions">Actions</h2>'
                   + self._action(f"/dead-letters/{quoted}/requeue", "Requeue")
                   + self._action(f"/dead-letters/{quoted}/purge", "Purge", danger=True,
                                  confirm="Delete this dead letter for good?") + "</section>"
                   if not self.read_only else ""))
        return self.layout(f"Dead letter {letter['task_id']}", body, current="dead-letters", notice=notice)

    def message_page(self, title: str, message: str, back: str) -> str:
        return self.layout(title, f'<p class="error-summary" role="alert">{esc(message)}</p>'
                                  f'<p><a href="{esc(back)}">Back</a></p>', current="")

