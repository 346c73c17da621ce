"""The on-call status page: ``GET /admin/status.html``, the status report as one HTML page with
no script and no external resource (it is served by a sidecar in a pod, reached through
`kubectl port-forward`). Every value from the report is escaped; no secret value is in the
report to begin with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1a1a1a; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.state { font-weight: 600; border-radius: 3px; padding: 0 .4em; }
.fresh { background: #d8f3dc; } .stale { background: #fff3bf; }
.near_limit, .failing, .open, .half_open, .down { background: #ffc9c9; }
.closed, .up { background: #d8f3dc; }
.muted { color: #666; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="muted">-</td>'
    return f"<td>{escape(str(value))}</td>"


def _link(url: str | None, text: str) -> str:
    if not url:
        return '<td class="muted">-</td>'
    return f'<td><a href="{escape(url, quote=True)}">{escape(text)}</a></td>'


def _badge(state: str) -> str:
    return f'<td><span class="state {escape(state, quote=True)}">{escape(state)}</span></td>'


def _table(headers: Iterable[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _secrets(rows: list[Mapping[str, Any]]) -> str:
    def row(r: Mapping[str, Any]) -> str:
        state = str(r["state"])
        limits = f"{r['refresh_interval_seconds']:g}s / {r['max_cache_age_seconds']:g}s"
        age = f"{r['age_seconds']:g}s of {limits}"
        return (
            f'<tr data-path="{escape(str(r["path"]), quote=True)}">'
            + _cell(r["path"])
            + _cell(r["class"])
            + _cell(r["owner"])
            + _cell(r["version"])
            + _badge(state)
            + _cell(age)
            + _cell(r["last_error"])
            + _cell(r["overlap_until"])
            + _link(r.get("runbook"), "runbook")
            + "</tr>"
        )

    headers = (
        "path",
        "class",
        "owner",
        "version",
        "state",
        "age / refresh / max age",
        "last error",
        "overlap until",
        "",
    )
    return _table(headers, (row(r) for r in rows), "No secrets cached.")


def _nodes(nodes: list[Mapping[str, Any]]) -> str:
    rows = (
        "<tr>"
        + _cell(n["address"])
        + _badge("up" if n["up"] else "down")
        + _badge(str(n["circuit"]))
        + _cell(n["seen_at"])
        + _link(n.get("runbook"), "runbook")
        + "</tr>"
        for n in nodes
    )
    return _table(
        ("store node", "last answer", "circuit", "seen", ""), rows, "No store request yet."
    )


def _pairs(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th>{_cell(v)}</tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def render_status_page(report: Mapping[str, Any]) -> str:
    """The report as a page: counts by state, secrets, store nodes, identity, snapshot, windows
    and revocations, with links to the runbooks."""
    states = ", ".join(f"{n} {escape(s)}" for s, n in sorted(report["states"].items())) or "none"
    auth, snapshot = report["auth"], report["snapshot"]
    extensions = [(name, f"until {until}") for name, until in report["extensions"].items()]
    polled = report["revocation_list_polled_at"]
    revocations = (
        "<tr>"
        + _cell(r.get("path"))
        + _cell(r.get("version", "every version"))
        + _cell(r.get("reason"))
        + "</tr>"
        for r in report["revocations"]
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>secrets-sidecar status</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>secrets-sidecar status</h1>"
        f'<p id="summary">{report["secrets_cached"]} secrets cached ({states}); '
        f"{report['overlaps_open']} overlaps open; generated {escape(report['generated_at'])}. "
        f'<a href="{escape(report["runbooks"], quote=True)}">Runbooks</a></p>'
        '<h2>Secrets</h2><div id="secrets">' + _secrets(report["secrets"]) + "</div>"
        '<h2>Store</h2><div id="store">' + _nodes(report["store_nodes"]) + "</div>"
        '<h2>Identity</h2><div id="identity">'
        + _pairs(
            [
                ("method", auth["method"]),
                ("last event", auth["last_event"]),
                ("ok", auth["ok"]),
                ("token expires", auth["token_expires_at"]),
                ("expires in (s)", auth["token_expires_in_seconds"]),
            ]
        )
        + "</div>"
        '<h2>Snapshot</h2><div id="snapshot">'
        + _pairs(
            [
                ("enabled", snapshot["enabled"]),
                ("written", snapshot["written_at"]),
                ("age (s)", snapshot["age_seconds"]),
                ("failing", snapshot["failing"]),
            ]
        )
        + "</div>"
        '<h2>Incident windows</h2><div id="extensions">'
        + _table(
            ("class", "window"),
            (f"<tr>{_cell(c)}{_cell(w)}</tr>" for c, w in extensions),
            "No cache window extended.",
        )
        + "</div>"
        '<h2>Revocations</h2><div id="revocations">'
        + f'<p class="muted">list polled {escape(str(polled or "never"))}</p>'
        + _table(("path", "version", "reason"), revocations, "Nothing revoked.")
        + "</div></body></html>"
    )
