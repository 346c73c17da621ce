"""``sidecar status``: the running sidecar's status report (``GET /admin/status``, with the
admin token from its config) as tables, for a terminal or `kubectl exec`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sidecar.core.durations import format_duration
from sidecar.ops.admin_client import ask
from sidecar.ops.columns import aligned
from sidecar.settings import Settings

EXIT_UNREACHABLE = 1


def main(settings: Settings, *, as_json: bool) -> int:
    """Print the report; 0, or 1 when the sidecar cannot be asked (with what to check)."""
    report = ask(settings, "GET", "/admin/status")
    if report is None:
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0


def render_text(report: Mapping[str, Any]) -> str:
    """The report as the terminal shows it: a summary line, then the tables."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(report["states"].items())) or "none"
    auth, snapshot = report["auth"], report["snapshot"]
    lines = [
        f"{report['secrets_cached']} secrets cached ({states}); "
        f"{report['overlaps_open']} overlaps open; at {report['generated_at']}",
        f"identity: {auth['method']}, last {auth['last_event'] or 'none'}"
        + ("" if auth["ok"] is None else (" ok" if auth["ok"] else " FAILED"))
        + (
            ""
            if auth["token_expires_in_seconds"] is None
            else f", token expires in {_duration(auth['token_expires_in_seconds'])}"
        ),
        "snapshot: "
        + (
            "off"
            if not snapshot["enabled"]
            else (
                f"written {_duration(snapshot['age_seconds'])} ago"
                if snapshot["age_seconds"] is not None
                else "not written yet"
            )
            + (" (writing FAILS)" if snapshot["failing"] else "")
        ),
        "",
    ]
    rows = [("PATH", "CLASS", "OWNER", "VERSION", "STATE", "AGE", "REFRESH", "MAX AGE", "ERROR")]
    rows += [
        (
            r["path"] + ("" if r["pinned_version"] is None else f"?version={r['pinned_version']}"),
            r["class"],
            r["owner"],
            "-" if r["version"] is None else str(r["version"]),
            r["state"],
            _duration(r["age_seconds"]),
            _duration(r["refresh_interval_seconds"]),
            _duration(r["max_cache_age_seconds"]),
            r["last_error"] or "-",
        )
        for r in report["secrets"]
    ]
    lines += aligned(rows)
    if report["store_nodes"]:
        lines.append("")
        nodes = [("STORE NODE", "ANSWERING", "CIRCUIT")]
        nodes += [
            (n["address"], "yes" if n["up"] else "NO", n["circuit"]) for n in report["store_nodes"]
        ]
        lines += aligned(nodes)
    for name, until in report["extensions"].items():
        lines.append(f"incident window: class {name} extended until {until}")
    for revoked in report["revocations"]:
        version = revoked.get("version")
        lines.append(
            f"revoked: {revoked.get('path')} "
            + ("(every version)" if version is None else f"v{version}")
            + f": {revoked.get('reason')}"
        )
    lines.append(f"runbooks: {report['runbooks']}")
    return "\n".join(lines)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "?"
    if seconds < 0:
        return "-" + _duration(-seconds)
    return format_duration(round(seconds) if seconds >= 10 else round(seconds, 1))
