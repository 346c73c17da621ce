"""``sidecar evidence``: what the audit log shows about each secret, for people or pipelines.

Exit codes: 0 report printed, 1 a retired value was presented within the window (so the
command can gate a pipeline), 2 bad input (missing or unreadable log, bad ``--since``).

``--json`` prints one document. Every key below is always present; times are the audit log's
ISO-8601 UTC strings, ``null`` when unknown; paths and failure kinds are sorted::

    generated_at               time of the report ("now")
    window                     {since: time | null, until: time, path_glob: str | null}
    input                      {file: str | null, records: valid records read,
                                in_window: records used after --since and --path,
                                malformed: lines or records that could not be read,
                                ignored: unknown events, or per-path events without a path}
    retired_value_presented    total in the window; non-zero makes the exit code 1
    warnings                   [str], the same lines the text report starts with
    paths                      {path: {
        class, owner           from the latest record that has them
        rotations              [{time, old_version, new_version, created_time,
                                 value_changed: bool | null (null: fingerprints missing),
                                 first_served: when the new version was first served | null,
                                 adoption_seconds: first_served - time | null,
                                 superseded: a later rotation's version was served,
                                 previous_retired: when old_version stopped being served | null,
                                 previous_last_served: when old_version was last served | null}]
        previous_value_presented   {count, last, fields: [field names]}
        retired_value_presented    {count, last, fields: [field names], versions: [versions]}
        fetch_failures         {kind: {count, last, last_reason}}   (count includes failures
                                a record says it suppressed)
        stale_served           {max_count, last}
        purges                 [{time, scope, target, entries, by}]   (scope "path")
        revocations            [{time, version, reason, entries}]
        unrevocations          [{time, version, reason}]}}
    global                     {
        started                [{time, version}]
        stopped                [time]
        cache_window           [{time, event: "extended" | "reverted", max_cache_age,
                                 previous_max_cache_age, until, requested}]
        snapshot_loads         [{time, restored, discarded, problem}]
        snapshot_saves         {count, last, last_entries}
        auth_renewed           {count, last}
        auth_failed            {count, last, last_reason, by_method: {method: count}}
        purges                 [{time, scope, target, entries, by}]   (scope "prefix", "all")
        audit_gaps             [{time, lost, since}]   (records the daemon could not write)}
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from sidecar.core.durations import format_duration, parse_duration
from sidecar.core.policy import glob_regex
from sidecar.ops.audit import iso_time

EXIT_OK, EXIT_RETIRED_PRESENTED, EXIT_BAD_INPUT = 0, 1, 2

_PATH_EVENTS = frozenset(
    {
        "rotation_detected",
        "version_first_served",
        "previous_retired",
        "previous_value_presented",
        "retired_value_presented",
        "fetch_failed",
        "stale_served",
        "purged",
        "revoked",
        "unrevoked",
    }
)
_GLOBAL_EVENTS = frozenset(
    {
        "cache_window_extended",
        "cache_window_reverted",
        "snapshot_loaded",
        "snapshot_saved",
        "auth_renewed",
        "auth_failed",
        "started",
        "stopped",
        "audit_gap",
        "purged",
    }
)


# -- building -------------------------------------------------------------------------


def build_report(
    records: Iterable[Mapping[str, Any]],
    *,
    since: float | None = None,
    path_glob: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """``since``: a window in seconds before ``now`` (default: the wall clock); older records
    are left out. ``path_glob`` (a policy glob) leaves out records about other paths; records
    about no path in particular (the global section) are always kept."""
    now = time.time() if now is None else now
    cutoff = None if since is None else now - since
    pattern = None if path_glob is None else glob_regex(path_glob)
    counts = {"records": 0, "in_window": 0, "malformed": 0, "ignored": 0}
    kept: list[tuple[float, str, Mapping[str, Any]]] = []
    for record in records:
        event, stamp = record.get("event"), record.get("time")
        epoch = _epoch(stamp) if isinstance(stamp, str) else None
        if not isinstance(event, str) or epoch is None:
            counts["malformed"] += 1
            continue
        counts["records"] += 1
        if cutoff is not None and epoch < cutoff:
            continue
        path = _path_of(record)
        if path is not None and pattern is not None and not pattern.fullmatch(path):
            continue
        kept.append((epoch, str(stamp), record))
    kept.sort(key=lambda item: item[0])  # stable: equal times keep the file's order

    paths: dict[str, _Secret] = {}
    glob: dict[str, Any] = _empty_global()
    for epoch, stamp, record in kept:
        event, path = record["event"], _path_of(record)
        if path is not None:
            secret = paths.setdefault(path, _Secret())
            secret.note_owner(record)
            if event in _PATH_EVENTS:
                secret.add(event, epoch, stamp, record)
                counts["in_window"] += 1
                continue
        if event in _GLOBAL_EVENTS:
            _add_global(glob, event, stamp, record)
            counts["in_window"] += 1
        else:
            counts["ignored"] += 1

    report_paths = {path: paths[path].summary() for path in sorted(paths)}
    return {
        "generated_at": iso_time(now),
        "window": {
            "since": None if cutoff is None else iso_time(cutoff),
            "until": iso_time(now),
            "path_glob": path_glob,
        },
        "input": {"file": None, **counts},
        "retired_value_presented": sum(
            p["retired_value_presented"]["count"] for p in report_paths.values()
        ),
        "warnings": _warnings(report_paths, glob),
        "paths": report_paths,
        "global": glob,
    }


def _path_of(record: Mapping[str, Any]) -> str | None:
    path = record.get("path")
    if isinstance(path, str):
        return path
    if record.get("event") == "purged" and record.get("scope") == "path":
        target = record.get("target")
        return target if isinstance(target, str) else None
    return None


def _epoch(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _tally() -> dict[str, Any]:
    return {"count": 0, "last": None}


class _Secret:
    def __init__(self) -> None:
        self.class_: Any = None
        self.owner: Any = None
        self.rotations: list[tuple[float, dict[str, Any]]] = []
        self.served: dict[Any, list[tuple[float, str]]] = {}  # version -> first-served times
        self.retired: list[tuple[float, str, Mapping[str, Any]]] = []
        self.previous = {**_tally(), "fields": set()}
        self.retired_presented = {**_tally(), "fields": set(), "versions": set()}
        self.failures: dict[str, dict[str, Any]] = {}
        self.stale: dict[str, Any] = {"max_count": 0, "last": None}
        self.purges: list[dict[str, Any]] = []
        self.revocations: list[dict[str, Any]] = []
        self.unrevocations: list[dict[str, Any]] = []

    def note_owner(self, record: Mapping[str, Any]) -> None:
        if record.get("class") is not None:
            self.class_ = record["class"]
        if record.get("owner") is not None:
            self.owner = record["owner"]

    def add(self, event: str, epoch: float, stamp: str, r: Mapping[str, Any]) -> None:
        if event == "rotation_detected":
            old, new = r.get("old_fingerprint"), r.get("new_fingerprint")
            rotation = {
                "time": stamp,
                "old_version": r.get("old_version"),
                "new_version": r.get("new_version"),
                "created_time": r.get("created_time"),
                "value_changed": None if old is None or new is None else old != new,
            }
            self.rotations.append((epoch, rotation))
        elif event == "version_first_served":
            version = r.get("version")
            if version is None or isinstance(version, str | int | float):  # a dict key
                self.served.setdefault(version, []).append((epoch, stamp))
        elif event == "previous_retired":
            self.retired.append((epoch, stamp, r))
        elif event == "previous_value_presented":
            _count(self.previous, stamp)
            _add(self.previous["fields"], r.get("field"))
        elif event == "retired_value_presented":
            _count(self.retired_presented, stamp)
            _add(self.retired_presented["fields"], r.get("field"))
            _add(self.retired_presented["versions"], r.get("version"))
        elif event == "fetch_failed":
            kind = str(r.get("kind") or "unknown")
            tally = self.failures.setdefault(kind, {**_tally(), "last_reason": None})
            _count(tally, stamp)
            # A writer may rate-limit these records and say how many it left out.
            suppressed = r.get("suppressed")
            if isinstance(suppressed, int) and not isinstance(suppressed, bool):
                tally["count"] += max(0, suppressed)
            tally["last_reason"] = r.get("reason")
        elif event == "stale_served":
            count = r.get("count")
            if isinstance(count, int) and count > self.stale["max_count"]:
                self.stale["max_count"] = count
            self.stale["last"] = stamp
        elif event == "purged":
            self.purges.append(_purge(stamp, r))
        elif event == "revoked":
            self.revocations.append(
                {
                    "time": stamp,
                    "version": r.get("version"),
                    "reason": r.get("reason"),
                    "entries": r.get("entries"),
                }
            )
        elif event == "unrevoked":
            self.unrevocations.append(
                {"time": stamp, "version": r.get("version"), "reason": r.get("reason")}
            )

    def summary(self) -> dict[str, Any]:
        rotations = [self._rotation(epoch, rotation) for epoch, rotation in self.rotations]
        adopted_later = False
        for rotation in reversed(rotations):
            rotation["superseded"] = adopted_later
            adopted_later = adopted_later or rotation["first_served"] is not None
        return {
            "class": self.class_,
            "owner": self.owner,
            "rotations": rotations,
            "previous_value_presented": {
                **self.previous,
                "fields": _sorted(self.previous["fields"]),
            },
            "retired_value_presented": {
                **self.retired_presented,
                "fields": _sorted(self.retired_presented["fields"]),
                "versions": _sorted(self.retired_presented["versions"]),
            },
            "fetch_failures": {kind: self.failures[kind] for kind in sorted(self.failures)},
            "stale_served": self.stale,
            "purges": self.purges,
            "revocations": self.revocations,
            "unrevocations": self.unrevocations,
        }

    def _rotation(self, epoch: float, rotation: dict[str, Any]) -> dict[str, Any]:
        new = rotation["new_version"]
        served = self.served.get(new, [])
        if new is None:
            # KV v1 has no versions: only a serve after the rotation can be of the new value.
            served = [item for item in served if item[0] >= epoch]
        first = served[0] if served else None
        retired = self._retirement(epoch, rotation["old_version"])
        return {
            **rotation,
            "first_served": None if first is None else first[1],
            "adoption_seconds": None if first is None else round(first[0] - epoch, 3),
            "superseded": False,
            "previous_retired": None if retired is None else retired[1],
            "previous_last_served": None if retired is None else retired[2].get("last_served"),
        }

    def _retirement(
        self, epoch: float, old_version: Any
    ) -> tuple[float, str, Mapping[str, Any]] | None:
        for item in self.retired:
            if item[0] >= epoch and item[2].get("version") == old_version:
                self.retired.remove(item)  # one retirement per rotation
                return item
        return None


def _count(tally: dict[str, Any], stamp: str) -> None:
    tally["count"] += 1
    tally["last"] = stamp


def _add(items: set[Any], item: Any) -> None:
    if isinstance(item, str | int | float):  # anything else is not from our writer
        items.add(item)


def _sorted(items: set[Any]) -> list[Any]:
    return sorted(items, key=lambda item: (isinstance(item, str), item))


def _purge(stamp: str, r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "time": stamp,
        "scope": r.get("scope"),
        "target": r.get("target"),
        "entries": r.get("entries"),
        "by": r.get("by"),
    }


def _empty_global() -> dict[str, Any]:
    return {
        "started": [],
        "stopped": [],
        "cache_window": [],
        "snapshot_loads": [],
        "snapshot_saves": {**_tally(), "last_entries": None},
        "auth_renewed": _tally(),
        "auth_failed": {**_tally(), "last_reason": None, "by_method": {}},
        "purges": [],
        "audit_gaps": [],
    }


def _add_global(glob: dict[str, Any], event: str, stamp: str, r: Mapping[str, Any]) -> None:
    if event == "started":
        glob["started"].append({"time": stamp, "version": r.get("version")})
    elif event == "stopped":
        glob["stopped"].append(stamp)
    elif event in ("cache_window_extended", "cache_window_reverted"):
        glob["cache_window"].append(
            {
                "time": stamp,
                "event": event.removeprefix("cache_window_"),
                "max_cache_age": r.get("max_cache_age"),
                "previous_max_cache_age": r.get("previous_max_cache_age"),
                "until": r.get("until"),
                "requested": r.get("requested"),
            }
        )
    elif event == "snapshot_loaded":
        glob["snapshot_loads"].append(
            {
                "time": stamp,
                "restored": r.get("restored"),
                "discarded": r.get("discarded"),
                "problem": r.get("problem"),
            }
        )
    elif event == "snapshot_saved":
        _count(glob["snapshot_saves"], stamp)
        glob["snapshot_saves"]["last_entries"] = r.get("entries")
    elif event == "auth_renewed":
        _count(glob["auth_renewed"], stamp)
    elif event == "auth_failed":
        failed = glob["auth_failed"]
        _count(failed, stamp)
        failed["last_reason"] = r.get("reason")
        method = str(r.get("method") or "unknown")
        failed["by_method"][method] = failed["by_method"].get(method, 0) + 1
    elif event == "purged":
        glob["purges"].append(_purge(stamp, r))
    elif event == "audit_gap":
        glob["audit_gaps"].append({"time": stamp, "lost": r.get("lost"), "since": r.get("since")})


def _warnings(paths: Mapping[str, Mapping[str, Any]], glob: Mapping[str, Any]) -> list[str]:
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


# -- text -----------------------------------------------------------------------------


def render_text(report: Mapping[str, Any]) -> str:
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
        out += ["  rotations:", *("    " + line for line in _table(rows))]
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


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]


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


# -- command --------------------------------------------------------------------------


class _Lines:
    """JSON objects from an audit log, counting the lines that are not one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.malformed = 0

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for raw in self._stream:
            line = raw.strip()
            if not line:
                continue  # the audit log ends a torn line after a failed write with a newline
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                yield record
            else:
                self.malformed += 1


def main(audit_log: Path, since: str | None, path_glob: str | None, as_json: bool) -> int:
    window = None
    if since is not None:
        try:
            window = parse_duration(since)
        except ValueError as exc:
            print(f"sidecar: --since: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        with audit_log.open("rb") as stream:
            if stream.peek(2)[:2] == b"\x1f\x8b":
                print(
                    f"sidecar: {audit_log} is gzip-compressed; decompress it first "
                    f"(zcat {audit_log} > audit.log) and pass that file",
                    file=sys.stderr,
                )
                return EXIT_BAD_INPUT
            lines = _Lines(stream)
            report = build_report(lines, since=window, path_glob=path_glob)
    except FileNotFoundError:
        print(
            f"sidecar: audit log {audit_log} does not exist; pass the file the sidecar "
            "writes its audit records to",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"sidecar: cannot read audit log {audit_log}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report["input"]["file"] = str(audit_log)
    report["input"]["malformed"] += lines.malformed
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return EXIT_RETIRED_PRESENTED if report["retired_value_presented"] else EXIT_OK
