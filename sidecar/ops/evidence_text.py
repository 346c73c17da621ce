"""``sidecar evidence`` for people: the report as text, warnings first, then per secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.core.durations import format_duration
from sidecar.ops.columns import aligned


def render_text(report: Mapping[str, Any]) -> str:
    """The report as text for people: where it came from, the warnings first (what needs action),
    then each secret and the global events."""
    window, counts = report["window"], report["input"]
    lines = [
        f"audit evidence{'' if counts['file'] is None else ' from ' + counts['file']}",
        f"window:  {window['since'] or 'start of log'} .. {window['until']}"
        + ("" if window["path_glob"] is None else f", paths matching {window['path_glob']}"),
        f"records: {counts['records']} read, {counts['in_window']} in the report"
        + (f", {counts['malformed']} malformed skipped" if counts["malformed"] else "")
        + (f", {counts['ignored']} not understood" if counts["ignored"] else ""),
    ]
    if report["warnings"]:
        lines += ["", *report["warnings"]]
    for path, secret in report["paths"].items():
        lines += ["", f"{path}  (class {secret['class'] or '-'}, owner {secret['owner'] or '-'})"]
        lines += _secret_lines(secret)
    lines += ["", "global", *_global_lines(report["global"])]
    return "\n".join(lines) + "\n"


def _secret_lines(secret: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if secret["rotations"]:
        rows: list[tuple[str, ...]] = [
            ("DETECTED", "VERSIONS", "VALUE", "FIRST SERVED", "AFTER", "PREVIOUS LAST SERVED")
        ]
        for r in secret["rotations"]:
            first = r["first_served"] or ("never (superseded)" if r["superseded"] else "never")
            rows.append(
                (
                    r["time"],
                    f"{_version(r['old_version'])} -> {_version(r['new_version'])}",
                    {True: "changed", False: "UNCHANGED", None: "?"}[r["value_changed"]],
                    first,
                    "-" if r["adoption_seconds"] is None else _duration(r["adoption_seconds"]),
                    _last_served(r),
                )
            )
        out += ["  rotations:", *("    " + line for line in aligned(rows))]
    else:
        out.append("  rotations: none")
    for label, key in (
        ("previous", "previous_value_presented"),
        ("retired", "retired_value_presented"),
    ):
        tally = secret[key]
        if tally["count"]:
            fields = ", ".join(str(f) for f in tally["fields"]) or "?"
            out.append(
                f"  {label} value presented: {_times(tally['count'])} "
                f"(fields {fields}; last {tally['last']})"
            )
    for kind, tally in secret["fetch_failures"].items():
        out.append(
            f"  fetch failed ({kind}): {_times(tally['count'])}, last {tally['last']}"
            + ("" if tally["last_reason"] is None else f": {tally['last_reason']}")
        )
    if secret["stale_served"]["max_count"]:
        stale = secret["stale_served"]
        # Only every Nth stale serve is recorded, so the true count may be higher.
        out.append(
            f"  stale served: at least {_times(stale['max_count'])}, last recorded {stale['last']}"
        )
    out += [f"  purged: {_purge_text(p)}" for p in secret["purges"]]
    for r in secret["revocations"]:
        which = "all versions" if r["version"] is None else _version(r["version"])
        out.append(
            f"  revoked: {r['time']} {which} ({_entries(r['entries'])}): {r['reason'] or '-'}"
        )
    for r in secret["unrevocations"]:
        which = "all versions" if r["version"] is None else _version(r["version"])
        out.append(f"  unrevoked: {r['time']} {which}: {r['reason'] or '-'}")
    for event, tally in secret.get("leases", {}).items():
        out.append(
            f"  lease {event.replace('_', ' ')}: {_times(tally['count'])}, last {tally['last']} "
            f"({tally['last_kid']})"
        )
    return out


def _global_lines(glob: Mapping[str, Any]) -> list[str]:
    out = [f"  started: {s['time']} (sidecar {s['version'] or '?'})" for s in glob["started"]]
    out += [f"  stopped: {stamp}" for stamp in glob["stopped"]]
    for w in glob["cache_window"]:
        if w["event"] == "extended":
            out.append(
                f"  cache window extended: {w['time']} max_cache_age "
                f"{_duration(w['previous_max_cache_age'])} -> {_duration(w['max_cache_age'])} "
                f"until {w['until']} (requested {w['requested']})"
            )
        else:
            out.append(
                f"  cache window reverted: {w['time']} max_cache_age "
                f"{_duration(w['max_cache_age'])}"
            )
    for load in glob["snapshot_loads"]:
        out.append(
            f"  snapshot loaded: {load['time']} restored {load['restored']}, discarded "
            f"{load['discarded']}" + (f"; problem: {load['problem']}" if load["problem"] else "")
        )
    saves = glob["snapshot_saves"]
    if saves["count"]:
        out.append(
            f"  snapshot saved: {_times(saves['count'])}, last {saves['last']} "
            f"({saves['last_entries']} entries)"
        )
    if glob["auth_renewed"]["count"]:
        renewed = glob["auth_renewed"]
        out.append(f"  auth renewed: {_times(renewed['count'])}, last {renewed['last']}")
    failed = glob["auth_failed"]
    if failed["count"]:
        methods = ", ".join(f"{m} {n}" for m, n in sorted(failed["by_method"].items()))
        out.append(
            f"  AUTH FAILED: {_times(failed['count'])} ({methods}), last {failed['last']}: "
            f"{failed['last_reason'] or '-'}"
        )
    out += [f"  purged: {_purge_text(p)}" for p in glob["purges"]]
    out += [
        f"  audit gap: {g['lost']} record(s) lost {g['since']} .. {g['time']}"
        for g in glob["audit_gaps"]
    ]
    return out or ["  nothing recorded"]


def _purge_text(p: Mapping[str, Any]) -> str:
    target = "everything" if p["scope"] == "all" else f"{p['scope']} {p['target']}"
    return f"{p['time']} {target} ({_entries(p['entries'])}, by {p['by'] or '?'})"


def _last_served(rotation: Mapping[str, Any]) -> str:
    if rotation["previous_retired"] is None:
        return "not retired"
    return str(rotation["previous_last_served"] or "never")


def _entries(count: Any) -> str:
    return (
        "1 cached entry" if count == 1 else f"{count if count is not None else '?'} cached entries"
    )


def _version(version: Any) -> str:
    return "-" if version is None else f"v{version}"


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "?"
    if seconds < 0:
        return "-" + format_duration(round(-seconds, 3))
    return format_duration(round(seconds, 3))


def warning_lines(paths: Mapping[str, Mapping[str, Any]], glob: Mapping[str, Any]) -> list[str]:
    """One line per finding that needs action: a retired value presented, a rotation never
    adopted or that kept the same value, records the log lost."""
    out: list[str] = []
    for path, secret in paths.items():
        retired = secret["retired_value_presented"]
        if retired["count"]:
            versions = ", ".join(_version(v) for v in retired["versions"]) or "unknown version"
            out.append(
                f"WARNING: {path}: a retired value ({versions}) was presented "
                f"{_times(retired['count'])}, last at {retired['last']}: someone still holds "
                "a rotated-out secret; find the caller and handle it as an incident"
            )
        for rotation in secret["rotations"]:
            change = f"{_version(rotation['old_version'])} -> {_version(rotation['new_version'])}"
            if rotation["first_served"] is None and not rotation["superseded"]:
                out.append(
                    f"WARNING: {path}: rotated {change} at {rotation['time']}, but "
                    f"{_version(rotation['new_version'])} was never served: the app has not "
                    "reloaded the secret"
                )
            if rotation["value_changed"] is False:
                out.append(
                    f"WARNING: {path}: rotation {change} at {rotation['time']} kept the same "
                    "value (equal fingerprints): the secret was not actually rotated"
                )
    for gap in glob["audit_gaps"]:
        out.append(
            f"WARNING: the audit log lost {gap['lost']} record(s) between {gap['since']} and "
            f"{gap['time']} (write failures): this report cannot see that time"
        )
    return out
